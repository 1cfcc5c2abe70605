"""What `mfdeploy serve` needs: a typed configuration, checked before anything is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfdeploy.data.images import DEFAULT_MAX_PIXELS
from mfdeploy.errors import UserError

# serve backend -> (runtime backend, precision): "int8" serves a build's onnx_int8/, "fp" the --variant's towers
BACKENDS: dict[str, tuple[str, str]] = {
    "ort-cpu": ("ort-cpu", "fp"),
    "ort-int8": ("ort-cpu", "int8"),
    "ort-cuda": ("ort-cuda", "fp"),
    "trt": ("trt", "fp"),
    "torch": ("torch", "fp"),
    "torch-cuda": ("torch-cuda", "fp"),  # fp16 on a CUDA GPU
    "torch-cuda-sparse": ("torch-cuda-sparse", "fp"),  # ... with 2:4 linears on the sparse tensor cores
    "openvino": ("openvino", "fp"),  # OpenVINO on the CPU, --precision auto | f32 | bf16 | f16
    "openvino-int8": ("openvino", "int8"),
}
# the option that sets a backend's precision -> the backends it applies to (others refuse it)
TORCH_BACKENDS = ("torch", "torch-cuda", "torch-cuda-sparse")
PRECISION_OPTIONS = {"--precision": ("openvino", "openvino-int8"), "--dtype": TORCH_BACKENDS,
                     "--compile": TORCH_BACKENDS}
VARIANTS = ("pruned", "dense")  # which model of a build (an export directory holds one)
API_KEY_ENV = "MFDEPLOY_API_KEY"


@dataclass
class ServeConfig:
    """The server's settings (built by the CLI or by hand; never from CLI objects).

    Attributes:
        build_dir: a `mfdeploy build --out` directory, or a `mfdeploy export --out` directory.
        backend: which runner serves the towers (`BACKENDS`).
        variant: which model of a build: "pruned" or "dense" (None: pruned); an export directory holds one, which
            a variant given must name.
        host, port: where to listen (port 0: a free port, chosen by the OS).
        max_batch: most items one model call takes; concurrent requests are gathered up to it.
        max_delay_ms: longest a request waits for others to fill its batch.
        max_queue: most items waiting per tower; beyond it requests get 503 with Retry-After.
        max_items: most inputs (texts, images, labels) in one request.
        max_body_mb: largest request body.
        threads: intra-op threads of the runner (default: the physical cores).
        max_image_pixels: most pixels (width x height, read from the header) of one image; over it: 413.
        max_request_pixels: most pixels of all the images of one request together; over it: 413.
        truncate: cut texts longer than the model's text length instead of answering 400 (a request's
            `"truncate": true` does the same for that request).
        grace_s: on SIGTERM, how long requests in flight may take; those that cannot finish get 503.
        request_timeout_s: longest one request may take before it is answered 504 (None: no limit).
        header_timeout_s: longest a connection may take to send a request's headers (on opening, and after each
            response) before it is closed (None: no limit; uvicorn has none).
        api_key: the key every route but /health and /metrics requires as `Authorization: Bearer KEY`.
        precision: OpenVINO's inference precision, auto | f32 | bf16 | f16 (None: auto).
        dtype: torch (CPU): float32 | bfloat16 (None: float32); torch-cuda, torch-cuda-sparse: float16 | float8
            (None: float16).
            Below the default, the towers serve only once they match the reference towers
            (`mfdeploy.runtime.gate`); otherwise the server refuses to start.
        compile: the torch backends: each tower through `torch.compile`, compiled before the server listens.
        cuda_graphs: the torch-cuda backends: each tower replayed from CUDA graphs captured before the server
            listens, one per batch bucket up to `max_batch` (and text length bucket); False: eager.
    """

    build_dir: Path
    backend: str = "ort-cpu"
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256
    max_items: int = 64
    max_body_mb: float = 16.0
    threads: int | None = None
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = 4 * DEFAULT_MAX_PIXELS
    truncate: bool = False
    variant: str | None = None
    grace_s: float = 10.0
    request_timeout_s: float | None = 60.0
    header_timeout_s: float | None = 20.0
    api_key: str | None = None
    precision: str | None = None
    dtype: str | None = None
    compile: bool = False
    cuda_graphs: bool = True

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def validate(self) -> ServeConfig:
        """Check every setting; returns self. Raises UserError naming the first bad one."""
        if self.backend not in BACKENDS:
            raise UserError(f"--backend {self.backend}: choose one of {', '.join(BACKENDS)}")
        if not self.host.strip():
            raise UserError(f"--host {self.host!r}: give the address to listen on (127.0.0.1: this machine only; "
                            "0.0.0.0: every interface)")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port}: must be 0-65535 (0: any free port)")
        for flag, value in (("--max-batch", self.max_batch), ("--max-queue", self.max_queue),
                            ("--max-items", self.max_items)):
            if value < 1:
                raise UserError(f"{flag} {value}: must be 1 or more")
        if not (math.isfinite(self.max_delay_ms) and self.max_delay_ms >= 0):
            raise UserError(f"--max-delay-ms {self.max_delay_ms}: must be a finite number, 0 or more")
        if not (math.isfinite(self.max_body_mb) and self.max_body_mb > 0):
            raise UserError(f"--max-body-mb {self.max_body_mb}: must be a finite number above 0")
        if self.max_queue < self.max_items:
            raise UserError(f"--max-queue {self.max_queue} is below --max-items {self.max_items}: a full-size "
                            "request could never be queued")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be 1 or more")
        for flag, value in (("--max-image-pixels", self.max_image_pixels),
                            ("--max-request-pixels", self.max_request_pixels)):
            if value < 1:
                raise UserError(f"{flag} {value}: must be 1 or more")
        if self.max_request_pixels < self.max_image_pixels:
            raise UserError(f"--max-request-pixels {self.max_request_pixels} is below --max-image-pixels "
                            f"{self.max_image_pixels}: an image of the largest size could never be sent")
        if self.variant is not None and self.variant not in VARIANTS:
            raise UserError(f"--variant {self.variant}: choose one of {', '.join(VARIANTS)}")
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise UserError(f"--grace-s {self.grace_s}: must be a finite number, 0 or more")
        for flag, limit in (("--request-timeout", self.request_timeout_s), ("--header-timeout", self.header_timeout_s)):
            if limit is not None and not (math.isfinite(limit) and limit > 0):
                raise UserError(f"{flag} {limit}: must be a finite number above 0 (0: no limit)")
        if self.request_timeout_s is not None and self.max_delay_ms / 1e3 >= self.request_timeout_s:
            raise UserError(f"--max-delay-ms {self.max_delay_ms:g} is not below --request-timeout "
                            f"{self.request_timeout_s:g} s: a lone request would wait for company until it timed "
                            "out (504); lower --max-delay-ms or raise --request-timeout")
        key = self.api_key
        if key is not None and not (key and key.isascii() and key.isprintable() and len(key.split()) == 1
                                    and key.split()[0] == key):
            raise UserError(f"--api-key (or {API_KEY_ENV}): must be non-empty printable ASCII without spaces (it "
                            "travels in an HTTP header)")
        self._check_precision()
        return self

    def _check_precision(self) -> None:
        from mfdeploy.runtime.openvino_runner import check_precision

        if self.precision is not None:
            check_precision(self.precision)
        if self.dtype is not None:
            from mfdeploy.runtime.torch_runner import check_backend_dtype

            check_backend_dtype(self.dtype, [self.backend])
        for flag, value in self._runner_flags():
            backends = PRECISION_OPTIONS[flag]
            if value is not None and self.backend not in backends:
                what = "" if value is True else f" {value}"
                raise UserError(f"{flag}{what}: applies to --backend {' or '.join(backends)}, not {self.backend}")

    def runner_options(self) -> dict[str, Any]:
        """The precision (and compile) options the runner of `backend` takes (`mfdeploy.runtime.make_runner`),
        those set only."""
        options = {flag.removeprefix("--"): value for flag, value in self._runner_flags() if value is not None}
        return options if self.cuda_graphs else {**options, "cuda_graphs": False}

    def _runner_flags(self) -> tuple[tuple[str, Any], ...]:
        """The runner's options as their flags: (flag, value or None when not given)."""
        return ("--precision", self.precision), ("--dtype", self.dtype), ("--compile", self.compile or None)


__all__ = ["API_KEY_ENV", "BACKENDS", "VARIANTS", "ServeConfig"]
