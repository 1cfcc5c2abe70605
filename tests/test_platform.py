"""The machine probes that benchmark tables print beside their numbers."""

from __future__ import annotations

from mfdeploy.platform import cpu_description, describe_cpuinfo

X86 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8

processor\t: 1
model name\t: Other
flags\t\t: fpu
"""

ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd asimddp i8mm
"""


def test_describe_cpuinfo_names_the_first_cpu_and_its_gemm_features():
    assert describe_cpuinfo(X86) == "Intel(R) Xeon(R) Processor (avx2 avx512f avx512_vnni amx_int8)"
    arm = describe_cpuinfo(ARM)
    assert arm.endswith("(asimddp i8mm)")
    assert describe_cpuinfo("processor\t: 0\nmodel name\t: Old\nflags\t: fpu sse\n") == \
        "Old (no SIMD GEMM features listed)"
    zen4 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: avx2 avx512f avx512_vnni avx512_bf16\n"
    assert describe_cpuinfo(zen4) == "AMD EPYC (avx2 avx512f avx512_vnni avx512_bf16)"  # BF16 GEMMs named
    # the x86 family and model tell apart what one model name covers (a VM's "AMD EPYC": Zen 4 is family 25)
    zen5 = "processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t: avx2 avx_vnni\n"
    assert describe_cpuinfo(zen5) == "AMD EPYC family 26 model 2 (avx2 avx_vnni)"


def test_cpu_description_on_this_machine():
    text = cpu_description()
    assert text and "(" in text and text.endswith(")")
