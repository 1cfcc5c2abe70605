"""`mfdeploy serve`: an HTTP embedding server over a build's (or an export's) towers, with dynamic batching."""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from mfdeploy.cli.options import CompileOpt, CudaGraphsOpt, PrecisionOpt, RunDtypeOpt
from mfdeploy.cli.render import err
from mfdeploy.cli.root import app


@app.command()
def serve(
    build_dir: Annotated[Path, typer.Argument(
        help="A build directory (`mfdeploy build --out`) or an export directory (`mfdeploy export --out`).")],
    backend: Annotated[str, typer.Option(
        help="ort-cpu | ort-int8 (onnx_int8/) | ort-cuda | trt | torch | torch-cuda | torch-cuda-sparse | openvino | "
             "openvino-int8 (onnx_int8/).")] = "ort-cpu",
    precision: PrecisionOpt = None,
    dtype: RunDtypeOpt = None,
    compile: CompileOpt = False,
    cuda_graphs: CudaGraphsOpt = True,
    variant: Annotated[str | None, typer.Option(
        help="Which model of a build: pruned (default: onnx/, engines/, pruned/) or dense (onnx_dense/, "
             "engines_dense/, the model it started from). An export directory holds one model: a variant given "
             "must be that one.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8080,
    api_key: Annotated[str | None, typer.Option(
        envvar="MFDEPLOY_API_KEY", show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every route but /health and /metrics (401 otherwise).")] = None,
    request_timeout: Annotated[float, typer.Option(
        help="Seconds one request may take; past it: 504 (0: no limit).")] = 60.0,
    header_timeout: Annotated[float, typer.Option(
        help="Seconds a connection may take to send a request's headers (slow clients hold connections: "
             "slowloris); past it the connection is closed (0: no limit).")] = 20.0,
    grace_s: Annotated[float, typer.Option(
        help="On SIGTERM: seconds to answer the requests in flight; those that cannot finish get 503 + "
             "Retry-After, then the server exits.")] = 10.0,
    max_batch: Annotated[int, typer.Option(help="Most items per model call (concurrent requests are gathered).")] = 32,
    max_delay_ms: Annotated[float, typer.Option(help="Longest a request waits for others to fill a batch.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Most items waiting per tower; beyond it: 503 + Retry-After.")] = 256,
    max_items: Annotated[int, typer.Option(help="Most inputs in one request.")] = 64,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, in MiB.")] = 16.0,
    threads: Annotated[int | None, typer.Option(help="Runner threads (default: the physical cores).")] = None,
    max_image_pixels: Annotated[int, typer.Option(
        help="Most pixels (width x height, from the header) of one image; over it: 413.")] = 64_000_000,
    max_request_pixels: Annotated[int, typer.Option(
        help="Most pixels of all the images of one request; over it: 413.")] = 256_000_000,
    truncate: Annotated[bool, typer.Option(
        help="Cut texts longer than the model's text length (default: answer 400, unless the request says "
             "\"truncate\": true).")] = False,
) -> None:
    """Serve a build (or an export directory) over HTTP: /v1/embeddings (OpenAI format), /v1/classify, /health,
    /metrics."""
    from mfdeploy.server import ServeConfig
    from mfdeploy.server import serve as run

    cfg = ServeConfig(build_dir=build_dir, backend=backend, host=host, port=port, max_batch=max_batch,
                      max_delay_ms=max_delay_ms, max_queue=max_queue, max_items=max_items, max_body_mb=max_body_mb,
                      threads=threads, max_image_pixels=max_image_pixels, max_request_pixels=max_request_pixels,
                      truncate=truncate, variant=variant, api_key=api_key, grace_s=grace_s,
                      request_timeout_s=request_timeout if request_timeout != 0 else None, precision=precision,
                      header_timeout_s=header_timeout if header_timeout != 0 else None,
                      dtype=dtype, compile=compile, cuda_graphs=cuda_graphs)

    def listening(h: str, p: int) -> None:
        what = f"{build_dir}" + (f" ({variant})" if variant else "")
        h = f"[{h}]" if ":" in h else h  # an IPv6 address, as a URL writes it (http://::1:8080 is no URL)
        err.print(f"serving {what} with {backend} on http://{h}:{p} (max batch {max_batch}, max delay "
                  f"{max_delay_ms:g} ms, queue {max_queue} items{', API key required' if api_key else ''}); "
                  "GET /health says when the towers are loaded", highlight=False, soft_wrap=True, markup=False)

    left_running = run(cfg, on_listen=listening)
    err.print("stopped", highlight=False)
    if left_running:  # the model thread is inside native code (a compiler, a long call): see `serve`'s docstring
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    # The process exits next. Its last garbage collection would walk every object torch and transformers made, for
    # nothing: seconds on a busy machine, past the --grace-s the exit is promised in. Frozen objects are skipped.
    gc.freeze()
