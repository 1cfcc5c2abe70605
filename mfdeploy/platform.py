"""What the machine offers: physical cores, CUDA devices, TensorRT, ONNX Runtime providers, memory use.

One probe per question, used by every part that asks it (the exporter's
engine stage, the runners, the bench): so "can TensorRT run here?" has one
answer everywhere. Heavy packages (tensorrt, onnxruntime) are imported
inside the functions.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once).

    Intra-op thread pools run fastest with one thread per physical core: two
    threads sharing a core fight over its FMA units and caches.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


# the CPU features that decide how fast ONNX Runtime's fp32 and int8 GEMMs run (MLAS picks its kernels by them)
GEMM_FLAGS = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "asimddp", "i8mm")


@lru_cache(maxsize=1)
def cpu_description() -> str:
    """The CPU's model name, x86 family and model, and its GEMM-relevant features, e.g. "AMD EPYC family 26 model 2
    (avx2 avx512f avx_vnni avx512_vnni avx512_bf16)".

    An INT8 speed-up means little without it: the same graph gains about 2.5x
    over fp32 with AVX-512 VNNI and more with AMX tiles. Read from
    /proc/cpuinfo; elsewhere `platform.processor()`.
    """
    try:
        return describe_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return platform.processor() or platform.machine()


def describe_cpuinfo(text: str) -> str:
    """`cpu_description` from the text of a /proc/cpuinfo (x86 "model name"/"flags", Arm "Features")."""
    first = text.split("\n\n")[0]  # the first processor's block
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
    name = fields.get("model name") or fields.get("Hardware") or platform.machine()
    if "cpu family" in fields:  # x86: one model name may cover CPU generations (a VM's "AMD EPYC": Zen 4 and Zen 5)
        name += f" family {fields['cpu family']} model {fields.get('model', '?')}"
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return f"{name} ({' '.join(f for f in GEMM_FLAGS if f in flags) or 'no SIMD GEMM features listed'})"


@lru_cache(maxsize=1)
def cuda_device_count() -> tuple[int, str]:
    """Number of CUDA devices the driver reports, and why it is 0 when it is.

    Asks the driver (`libcuda`) directly rather than torch, which may be a
    CPU-only build on a machine that has a GPU.
    """
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0, "no CUDA driver (libcuda not found)"
    if lib.cuInit(0) != 0:
        return 0, "the CUDA driver failed to initialise (cuInit)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "no CUDA device visible"
    return count.value, ""


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB (`getrusage` ru_maxrss).

    A process-wide high-water mark: it never goes down, so it bounds the
    memory of everything loaded so far, not of one backend alone.
    """
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024.0


def current_rss_mb() -> float:
    """The process's resident set size now, in MiB (from /proc/self/statm; 0 if unknown)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def available_memory_bytes() -> int | None:
    """Memory the kernel says new allocations can take without swapping (`MemAvailable`); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, IndexError, ValueError):
        return None
    return None


def release_freed_memory() -> bool:
    """Hand memory the process has freed back to the OS (glibc's `malloc_trim(0)`; a no-op elsewhere).

    glibc keeps freed heap memory for reuse, in every thread's arena: after a
    burst of large decoded images a server's RSS would otherwise stay at its
    peak. Returns whether anything was released.
    """
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    return bool(trim(0)) if trim is not None else False


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the libc the interpreter is linked with
    except OSError:
        return None


GPU_EXTRA = "on a CUDA machine, install the gpu extra (pip install -e \".[gpu]\" in a clone of mfdeploy)"


@dataclass(frozen=True)
class Probe:
    """The answer to "can X run here?": `ok`, else `reason` (one line); `version` when known."""

    ok: bool
    reason: str = ""
    version: str | None = None


def tensorrt() -> Probe:
    """Whether TensorRT can build and run engines here: an installed `tensorrt` package and a CUDA device.

    An empty `tensorrt` namespace (type stubs, a broken install) imports fine
    but holds neither `Builder` nor `Runtime`: it counts as not installed.
    """
    try:
        import tensorrt as trt
    except ImportError as e:
        return Probe(False, f"TensorRT is not installed ({e}): {GPU_EXTRA}")
    if not (hasattr(trt, "Builder") and hasattr(trt, "Runtime")):
        return Probe(False, "TensorRT is not installed (only an empty `tensorrt` package was found, e.g. type "
                            f"stubs): {GPU_EXTRA}")
    count, why = cuda_device_count()
    if count == 0:
        return Probe(False, f"no CUDA GPU: {why}", trt.__version__)
    return Probe(True, "", trt.__version__)


ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}


def ort_provider(provider: str) -> Probe:
    """Whether ONNX Runtime's `provider` ("cpu", "cuda", "tensorrt") is in this build and has a device.

    Raises:
        ValueError: an unknown provider name (a programming error, not a user's).
    """
    import onnxruntime as ort

    if provider not in ORT_PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(ORT_PROVIDERS)}")
    available = ort.get_available_providers()
    if ORT_PROVIDERS[provider] not in available:
        if provider == "cpu":
            return Probe(False, "this onnxruntime build has no CPUExecutionProvider", ort.__version__)
        return Probe(False, f"onnxruntime-gpu is not installed: onnxruntime {ort.__version__} offers "
                            f"{', '.join(p.removesuffix('ExecutionProvider') for p in available)} only "
                            f"(no {ORT_PROVIDERS[provider]}); {GPU_EXTRA}", ort.__version__)
    if provider != "cpu":
        count, why = cuda_device_count()
        if count == 0:
            return Probe(False, why, ort.__version__)
    return Probe(True, "", ort.__version__)


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of these distributions (None: not installed), for manifests."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
