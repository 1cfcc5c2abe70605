"""`mfdeploy eval`: zero-shot accuracy and retrieval recall, with retention against the dense model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfdeploy.cli.options import ModelArg, PrecisionOpt, RunDtypeOpt
from mfdeploy.cli.render import err, out, results_table, status_text, warning
from mfdeploy.cli.root import app


@app.command("eval")
def eval_(
    model: ModelArg = None,
    data: Annotated[str, typer.Option(
        help="'shapes', a JSONL of image-caption pairs, or an image folder with one sub-folder per class "
             "(see above).")] = "shapes",
    backend: Annotated[str, typer.Option(
        help="torch | onnx (ONNX Runtime on the CPU; serve's ort-cpu) | onnx-int8 (a build's onnx_int8/, or a "
             "quantized export; serve's ort-int8) | openvino (OpenVINO on the CPU, same towers) | openvino-int8.")
    ] = "torch",
    precision: PrecisionOpt = None,
    dtype: RunDtypeOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.")] = None,
    template: Annotated[
        str | None, typer.Option(help="Prompt template of an image folder's classes (default: 'a photo of a {}.').")
    ] = None,
    retention: Annotated[
        bool, typer.Option(help="For a prune/build directory, also evaluate the dense model and show retention.")
    ] = True,
    images: Annotated[int | None, typer.Option(
        help="Shapes suite: single-object images for the attribute tasks (default 1000).")] = None,
    pairs: Annotated[int | None, typer.Option(
        help="Shapes suite: image-caption pairs for retrieval (default 1000).")] = None,
    device: Annotated[str, typer.Option(
        help="auto (CUDA when present) | cpu | cuda | cuda:N: where --backend torch runs.")] = "auto",
) -> None:
    """Zero-shot accuracy and retrieval recall of a model; retention against the dense model when known.

    An image folder (--data FOLDER) holds one sub-folder per class, at least two, each named after its class and
    holding that class's images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif): FOLDER/cat/001.jpg,
    FOLDER/dog/002.png, ... The sub-folder's name, with '_' read as a space, fills the prompt template
    (--template, default 'a photo of a {}.'); the score is zero-shot accuracy over every image.
    """
    import inspect

    from mfdeploy import api  # unwrapped: its errors keep the CLI's option names (api_names)
    from mfdeploy.eval import check_json_target, write_result

    if json_path is not None:
        check_json_target(json_path, [model, data])
    with err.status("evaluating") as status:
        result = inspect.unwrap(api.evaluate)(model, data, backend=backend, template=template,
                              retention="if known" if retention else False,
                              progress=lambda msg: status.update(status_text(msg)), n_images=images, n_retrieval=pairs,
                              device=device, precision=precision, dtype=dtype)
    out.print(results_table(result))
    if "gate" in result:  # below fp32: what ran, and how close it came to the fp32 towers
        gate = result["gate"]
        how = ", as quantize.json records" if gate.get("recorded") else ""  # a quantized export: not re-run
        err.print("precision: " + ", ".join(f"{t} {p} (min cosine {gate[t]['min_cosine']:.5f} against the fp32 "
                                            f"towers{how})" for t, p in result["precision"].items() if t in gate),
                  highlight=False, soft_wrap=True, markup=False)
    if "retention_error" in result:
        warning(f"no retention: {result['retention_error']}")
    if json_path is not None:
        err.print(f"wrote {write_result(result, json_path)}", highlight=False)
