"""Backends by name, and the build directory they read their artifacts from.

    torch     PyTorch eager (CPU), from `pruned/` (dense: `build.json["model"]`); `dtype="bfloat16"`: in bf16
    torch-cuda         PyTorch on a CUDA GPU in fp16, same checkpoints
    torch-cuda-sparse  the same with every 2:4 linear on the sparse tensor cores (to_sparse_semi_structured)
    ort-cpu   ONNX Runtime, CPU EP, from `onnx/` (dense: `onnx_dense/`)
    ort-cuda  ONNX Runtime, CUDA EP, same files
    ort-trt   ONNX Runtime, TensorRT EP, same files; engine/timing caches in `ort_trt_cache/`
    trt       TensorRT engines `engines/*.plan` (dense: `engines_dense/`), via polygraphy
    openvino  OpenVINO's CPU plugin over the ONNX Runtime files, in `precision` auto | f32 | bf16 | f16

The "int8" variant is a build's `onnx_int8/` (`build --int8`), for the ONNX backends (ONNX Runtime, OpenVINO).
A runner computing in less than fp32 (OpenVINO, torch in bf16) passes the precision gate
(`mfdeploy.runtime.gate`) against the fp32 towers before it is returned, or is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mfdeploy.artifacts.layout import ONNX_DIR, ORT_TRT_CACHE_DIR, TOWER_NAMES
from mfdeploy.errors import UserError
from mfdeploy.runtime.base import BackendUnavailable, Runner
from mfdeploy.runtime.build_dir import BuildDir

VARIANTS = ("pruned", "dense", "int8")
TOWERS = TOWER_NAMES


def _no_int8(variant: str) -> None:
    if variant == "int8":
        raise BackendUnavailable("the int8 towers are ONNX graphs: time them with the ONNX Runtime or OpenVINO "
                                 "backends")


def _torch(build: BuildDir, variant: str, opts: dict) -> Runner:
    from mfdeploy.runtime.gate import gate_runner
    from mfdeploy.runtime.torch_runner import TorchRunner, check_dtype

    _no_int8(variant)
    dtype = opts.get("dtype")
    if dtype is not None:
        check_dtype(dtype)  # a bad --dtype before the model loads
    adapter = build.adapter(variant)
    runner = TorchRunner(adapter, threads=opts.get("threads"), dtype=dtype, compile=bool(opts.get("compile")))
    if runner.precision == "f32":
        return runner
    # the fp32 towers it was copied from are the reference
    return gate_runner(runner, TorchRunner(adapter, dtype="float32"), build.path / ONNX_DIR,
                       lambda: build.adapter("pruned"), variant, opts.get("towers", TOWERS),
                       label=f"torch {runner.precision} ({variant})", fix="use --dtype float32")


def _openvino(build: BuildDir, variant: str, opts: dict) -> Runner:
    from mfdeploy.runtime.gate import gate_runner
    from mfdeploy.runtime.openvino_runner import OpenVinoRunner, check_precision, require_openvino
    from mfdeploy.runtime.ort_runner import OrtRunner

    precision = check_precision(opts.get("precision") or "auto")
    require_openvino()  # a missing package says so before any file is read
    towers = opts.get("towers", TOWERS)
    folder = build.onnx_dir(variant)
    runner = OpenVinoRunner(folder, precision=precision, threads=opts.get("threads"), towers=towers)
    # the reference: ONNX Runtime over the fp32 graphs (an int8 graph's are the pruned ones it was quantized from)
    reference = OrtRunner(build.onnx_dir("dense" if variant == "dense" else "pruned"), threads=opts.get("threads"),
                          towers=towers, spin=False)
    fix = "use --precision f32" if runner.precision != "f32" else "serve these towers with ONNX Runtime (ort-cpu)"
    return gate_runner(runner, reference, build.path / ONNX_DIR, lambda: build.adapter("pruned"), variant, towers,
                       label=f"openvino {runner.precision} ({folder.name}/)", fix=fix)


def _torch_cuda(sparse: bool) -> Callable[[BuildDir, str, dict], Runner]:
    def make(build: BuildDir, variant: str, opts: dict) -> Runner:
        from mfdeploy.runtime.gate import gate_runner
        from mfdeploy.runtime.torch_cuda import TorchCudaRunner, cuda_unavailable
        from mfdeploy.runtime.torch_runner import check_backend_dtype

        _no_int8(variant)
        name = "torch-cuda-sparse" if sparse else "torch-cuda"
        dtype = opts.get("dtype")
        if dtype is not None:
            check_backend_dtype(dtype, [name])  # a bad --dtype before anything loads
        reason = cuda_unavailable()
        if reason is not None:  # said before any model is loaded
            raise BackendUnavailable(reason)
        fp8 = dtype == "float8"
        adapter = build.adapter(variant)
        runner = TorchCudaRunner(adapter, sparse=sparse, compile=bool(opts.get("compile")),
                                 cuda_graphs=opts.get("cuda_graphs", True), max_batch=opts.get("max_batch"),
                                 max_text_len=opts.get("max_text_len"), fp8=fp8)
        if not fp8:
            return runner
        # FP8 against the same model's fp16 towers (eager): the reference the issue names for it
        return gate_runner(runner, TorchCudaRunner(adapter, cuda_graphs=False), build.path / ONNX_DIR,
                           lambda: build.adapter("pruned"), variant, opts.get("towers", TOWERS),
                           label=f"{name} fp8 ({variant})", fix="use --dtype float16")

    return make


def _ort(provider: str) -> Callable[[BuildDir, str, dict], Runner]:
    def make(build: BuildDir, variant: str, opts: dict) -> Runner:
        from mfdeploy.runtime.ort_runner import OrtRunner, check_provider

        check_provider(provider)  # a provider that cannot run here says so before any file is read
        fp16, sparse = opts.get("fp16"), opts.get("sparse")
        if fp16 is None or sparse is None:
            default_fp16, default_sparse = build.tensorrt_flags()
            fp16 = default_fp16 if fp16 is None else fp16
            sparse = default_sparse if sparse is None else sparse
        runner = OrtRunner(
            build.onnx_dir(variant),
            provider=provider,
            threads=opts.get("threads"),
            cache_dir=build.path / ORT_TRT_CACHE_DIR / variant if provider == "tensorrt" else None,
            fp16=fp16,
            sparse=sparse,
            towers=opts.get("towers", TOWERS),
            max_batch=opts.get("max_batch"),
            max_text_len=opts.get("max_text_len"),
            spin=opts.get("spin", True),
        )
        if provider == "tensorrt" and fp16 and runner.precision == "f32":  # INT8 towers keep their own label
            runner.precision = "f16"
        return runner

    return make


def _trt(build: BuildDir, variant: str, opts: dict) -> Runner:
    from mfdeploy.runtime.trt_runner import TrtRunner, engine_command

    _no_int8(variant)  # `build --int8` on a GPU builds engines/ from onnx_qdq/: the pruned variant is int8

    runner = TrtRunner(build.engines_dir(variant), towers=opts.get("towers", TOWERS),
                       how=engine_command(build, variant))
    engine = build.build.engine
    runner.precision = "int8+f16" if engine is not None and engine.int8 and variant == "pruned" else \
        "f16" if build.tensorrt_flags()[0] else "f32"
    return runner


ORT_BACKENDS = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}  # backend -> ONNX Runtime provider
BACKENDS: dict[str, Callable[[BuildDir, str, dict], Runner]] = {
    "torch": _torch,
    "torch-cuda": _torch_cuda(sparse=False),
    "torch-cuda-sparse": _torch_cuda(sparse=True),
    **{name: _ort(provider) for name, provider in ORT_BACKENDS.items()},
    "trt": _trt,
    "openvino": _openvino,
}
ONNX_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "openvino")  # they run the ONNX graphs, int8 ones included


def check_backends(names: Sequence[str]) -> list[str]:
    """Validate backend names, keeping order and dropping repeats.

    Raises:
        UserError: an unknown name, with the list of known ones.
    """
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend {', '.join(map(repr, unknown))}; known backends: {', '.join(BACKENDS)}")
    if not names:
        raise UserError(f"no backend given; known backends: {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def make_runner(
    backend: str,
    build_dir: str | Path | BuildDir,
    *,
    variant: str = "pruned",
    threads: int | None = None,
    fp16: bool | None = None,
    sparse: bool | None = None,
    towers: Sequence[str] = TOWERS,
    max_batch: int | None = None,
    max_text_len: int | None = None,
    spin: bool = True,
    precision: str | None = None,
    dtype: str | None = None,
    compile: bool = False,
    cuda_graphs: bool = True,
) -> Runner:
    """A runner for one backend over one variant of a build.

    Args:
        backend: one of `BACKENDS` (torch, ort-cpu, ort-cuda, ort-trt, trt, openvino).
        build_dir: a build directory, or an open `BuildDir` (shares loaded models).
        variant: "pruned" (the build's artifacts), "dense" (the model it started from) or "int8"
            (the build's `onnx_int8/`, the ONNX backends only).
        threads: CPU intra-op threads (default: the physical cores).
        fp16: TensorRT EP FP16 kernels (default: as the build's engines, `BuildDir.tensorrt_flags`).
        sparse: TensorRT EP 2:4 sparse kernels (default: as the build's engines).
        towers: towers to load.
        max_batch: TensorRT EP optimisation profile bound.
        max_text_len: TensorRT EP optimisation profile bound.
        spin: ONNX Runtime thread spinning (off when sessions take turns).
        precision: OpenVINO's inference precision: auto (default: native on this CPU) | f32 | bf16 | f16.
        dtype: torch (CPU): float32 (default) | bfloat16; torch-cuda, torch-cuda-sparse: float16 (default) | float8.
        compile: the torch backends: each tower through `torch.compile`, compiled before the runner is returned.
        cuda_graphs: the torch-cuda backends: towers replayed from CUDA graphs, one per batch (and text length)
            bucket up to `max_batch` (and `max_text_len`), captured before the runner is returned.

    Raises:
        BackendUnavailable: the backend cannot run here; the message says why. `GateRefused` (a subclass): a
            reduced precision whose embeddings fall under the gate against the fp32 towers.
        UserError: unknown backend, variant, precision or dtype, or a broken build directory.
    """
    check_backends([backend])
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    build = build_dir if isinstance(build_dir, BuildDir) else BuildDir(build_dir, require_onnx=False)
    opts = dict(threads=threads, fp16=fp16, sparse=sparse, towers=tuple(towers), max_batch=max_batch,
                max_text_len=max_text_len, spin=spin, precision=precision, dtype=dtype, compile=compile,
                cuda_graphs=cuda_graphs)
    return BACKENDS[backend](build, variant, opts)


def unavailable_here(backend: str) -> str | None:
    """Why `backend` cannot run on this machine at all (a package or a device missing), or None; cheap: no model
    is read, so a command can say it before its first step (`probe_backends` loads the towers)."""
    from mfdeploy import platform

    if backend in ("torch-cuda", "torch-cuda-sparse"):
        from mfdeploy.runtime.torch_cuda import cuda_unavailable

        return cuda_unavailable()
    if backend == "openvino":
        from mfdeploy.runtime.openvino_runner import require_openvino

        try:
            require_openvino()
        except BackendUnavailable as e:
            return str(e)
        return None
    if backend == "trt" or backend in ORT_BACKENDS:
        probe = platform.tensorrt() if backend == "trt" else platform.ort_provider(ORT_BACKENDS[backend])
        return None if probe.ok else probe.reason
    return None


def probe_backends(build_dir: str | Path | BuildDir, backends: Sequence[str] | None = None) -> dict[str, str | None]:
    """Which backends can run on this machine for this build: name -> None, or the reason it cannot.

    Builds each backend's runner over the pruned artifacts once and closes it.
    """
    build = build_dir if isinstance(build_dir, BuildDir) else BuildDir(build_dir, require_onnx=False)
    out: dict[str, str | None] = {}
    for name in check_backends(list(backends or BACKENDS)):
        try:
            make_runner(name, build).close()
            out[name] = None
        except BackendUnavailable as e:
            out[name] = str(e)
    return out

