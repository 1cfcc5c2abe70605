"""What `mfdeploy serve` needs: a typed configuration, checked before anything is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mfdeploy.errors import UserError

# serve backend -> (runtime backend, build variant)
BACKENDS: dict[str, tuple[str, str]] = {
    "ort-cpu": ("ort-cpu", "pruned"),
    "ort-int8": ("ort-cpu", "int8"),
    "ort-cuda": ("ort-cuda", "pruned"),
    "trt": ("trt", "pruned"),
    "torch": ("torch", "pruned"),
    "torch-cuda": ("torch-cuda", "pruned"),  # fp16 on a CUDA GPU
    "torch-cuda-sparse": ("torch-cuda-sparse", "pruned"),  # ... with 2:4 linears on the sparse tensor cores
}


@dataclass
class ServeConfig:
    """The server's settings (built by the CLI or by hand; never from CLI objects).

    Attributes:
        build_dir: a `mfdeploy build --out` directory.
        backend: which runner serves the towers (`BACKENDS`).
        host, port: where to listen (port 0: a free port, chosen by the OS).
        max_batch: most items one model call takes; concurrent requests are gathered up to it.
        max_delay_ms: longest a request waits for others to fill its batch.
        max_queue: most items waiting per tower; beyond it requests get 503 with Retry-After.
        max_items: most inputs (texts, images, labels) in one request.
        max_body_mb: largest request body.
        threads: intra-op threads of the runner (default: the physical cores).
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

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def validate(self) -> ServeConfig:
        """Check every setting; returns self. Raises UserError naming the first bad one."""
        if self.backend not in BACKENDS:
            raise UserError(f"--backend {self.backend}: choose one of {', '.join(BACKENDS)}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port}: must be 0-65535 (0: any free port)")
        for flag, value in (("--max-batch", self.max_batch), ("--max-queue", self.max_queue),
                            ("--max-items", self.max_items)):
            if value < 1:
                raise UserError(f"{flag} {value}: must be 1 or more")
        if not (math.isfinite(self.max_delay_ms) and self.max_delay_ms >= 0):
            raise UserError(f"--max-delay-ms {self.max_delay_ms}: must be 0 or more")
        if not (math.isfinite(self.max_body_mb) and self.max_body_mb > 0):
            raise UserError(f"--max-body-mb {self.max_body_mb}: must be positive")
        if self.max_queue < self.max_items:
            raise UserError(f"--max-queue {self.max_queue} is below --max-items {self.max_items}: a full-size "
                            "request could never be queued")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be 1 or more")
        return self


__all__ = ["BACKENDS", "ServeConfig"]
