"""`mfdeploy serve`: an HTTP embedding server over a build's towers, with dynamic batching."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfdeploy.cli.app import app
from mfdeploy.cli.render import err


@app.command()
def serve(
    build_dir: Annotated[Path, typer.Argument(help="A build directory (`mfdeploy build --out`).")],
    backend: Annotated[str, typer.Option(
        help="ort-cpu | ort-int8 (onnx_int8/) | ort-cuda | trt | torch | torch-cuda | torch-cuda-sparse.")] = "ort-cpu",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8080,
    max_batch: Annotated[int, typer.Option(help="Most items per model call (concurrent requests are gathered).")] = 32,
    max_delay_ms: Annotated[float, typer.Option(help="Longest a request waits for others to fill a batch.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Most items waiting per tower; beyond it: 503 + Retry-After.")] = 256,
    max_items: Annotated[int, typer.Option(help="Most inputs in one request.")] = 64,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, in MiB.")] = 16.0,
    threads: Annotated[int | None, typer.Option(help="Runner threads (default: the physical cores).")] = None,
) -> None:
    """Serve a build over HTTP: /v1/embeddings (OpenAI format), /v1/classify, /health, /metrics."""
    from mfdeploy.server import ServeConfig
    from mfdeploy.server import serve as run

    cfg = ServeConfig(build_dir=build_dir, backend=backend, host=host, port=port, max_batch=max_batch,
                      max_delay_ms=max_delay_ms, max_queue=max_queue, max_items=max_items, max_body_mb=max_body_mb,
                      threads=threads)

    def listening(h: str, p: int) -> None:
        err.print(f"serving {build_dir} with {backend} on http://{h}:{p} (max batch {max_batch}, max delay "
                  f"{max_delay_ms:g} ms, queue {max_queue} items); GET /health says when the towers are loaded",
                  highlight=False, soft_wrap=True)

    run(cfg, on_listen=listening)
    err.print("stopped", highlight=False)
