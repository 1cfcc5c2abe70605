"""The README of a Triton model repository: its models, how to start tritonserver on it, and a Python client.

The client example is written from the repository's own record (model, tensor names, text length), so it
runs as printed against this repository.
"""

from __future__ import annotations

from typing import Any

from mfdeploy.artifacts.layout import TRITON_PREPROCESSING_DIR

_NUMPY = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT64": "int64", "TYPE_INT32": "int32"}


def _shape(tensor: dict[str, Any]) -> str:
    return "[" + ", ".join(str(d) for d in ["B", *tensor["dims"]]) + "]"


def _pick(models: dict[str, Any], tower: str) -> tuple[str, dict[str, Any]]:
    """The tower's fp32 ONNX model (it loads on any machine), else its first model."""
    mine = [(name, m) for name, m in models.items() if m["tower"] == tower]
    return next(((n, m) for n, m in mine if m["variant"] == "fp32"), mine[0])


def _client(record: dict[str, Any]) -> list[str]:
    models, limits = record["models"], record["limits"]
    text_name, text = _pick(models, "text")
    vision_name, vision = _pick(models, "vision")
    length = min(n for n in (limits.get("max_text_len"), limits.get("plan_max_text_len"), 77) if n)
    fixed = next((d for t in text["inputs"] for d in t["dims"] if d > 0), None)  # a fixed-length text tower
    length = fixed or length
    text_in = [f'    "{t["name"]}": texts["{t["name"]}"].astype(np.{_NUMPY.get(t["data_type"], "int64")}),'
               for t in text["inputs"]]
    pixels = vision["inputs"][0]
    return [
        "```python",
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoTokenizer",
        "from tritonclient.utils import np_to_triton_dtype",
        "",
        'client = httpclient.InferenceServerClient(url="localhost:8000")',
        f'tokenizer = AutoTokenizer.from_pretrained("{TRITON_PREPROCESSING_DIR}")  # this repository\'s folder',
        f'processor = AutoImageProcessor.from_pretrained("{TRITON_PREPROCESSING_DIR}")',
        "",
        "",
        "def infer(model, arrays, output):",
        "    inputs = []",
        "    for name, array in arrays.items():",
        "        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))",
        "        tensor.set_data_from_numpy(array)",
        "        inputs.append(tensor)",
        "    result = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(output)])",
        "    return result.as_numpy(output)",
        "",
        "",
        f"# texts: {' and '.join(t['name'] for t in text['inputs'])} padded to one length "
        f"({'exactly' if fixed else 'at most'} {length}), so that requests batch together",
        f'texts = tokenizer(["a photo of a red circle", "a photo of a dog"], padding="max_length", '
        f'max_length={length},',
        '                  truncation=True, return_tensors="np")',
        f'text_embeds = infer("{text_name}", {{',
        *text_in,
        f'}}, "{text["outputs"][0]["name"]}")',
        "",
        f"# images: the image processor's pixel values {_shape(pixels)}",
        'image = Image.open("photo.jpg").convert("RGB")',
        'pixels = processor(images=[image], return_tensors="np")["pixel_values"]',
        f'image_embeds = infer("{vision_name}", {{',
        f'    "{pixels["name"]}": pixels.astype(np.{_NUMPY.get(pixels["data_type"], "float32")}),',
        f'}}, "{vision["outputs"][0]["name"]}")',
        "",
        "cosine = image_embeds @ text_embeds.T  # L2-normalised embeddings: cosine similarities",
        *_scores(record.get("scoring")),
        "```",
    ]


def _scores(scoring: dict[str, Any] | None) -> list[str]:
    """The client's last lines: the model's own scores from the cosines (triton.json's `scoring`)."""
    if not scoring:
        return ["print(cosine)"]
    logits = f"{scoring['logit_scale']!r} * cosine"  # exp(logit_scale), as the server scores
    if scoring["function"] == "sigmoid":
        return [f"probs = 1 / (1 + np.exp(-({logits} + {scoring['logit_bias']!r})))  # one sigmoid per pair "
                "(triton.json: scoring)", "print(probs)"]
    return [f"logits = {logits}  # triton.json: scoring",
            "probs = np.exp(logits - logits.max(axis=1, keepdims=True))",
            "probs /= probs.sum(axis=1, keepdims=True)  # a softmax over the texts", "print(probs)"]


def render_readme(record: dict[str, Any]) -> str:
    """README.md for the repository described by `record` (triton.json without its artifacts)."""
    models = record["models"]
    rows = []
    for name, m in models.items():
        io = "; ".join(f"{t['name']} {t['data_type'][5:]} {_shape(t)}" for t in m["inputs"])
        out = "; ".join(f"{t['name']} {t['data_type'][5:]} {_shape(t)}" for t in m["outputs"])
        rows.append(f"| `{name}` | {m['platform']} | {m['instance_kind']} | `{m['io_from']}` | {io} | {out} |")
    dynamic_text = any("-1" in row for row in rows)  # a -1 dim: SigLIP's towers fix the text length
    cpu = [n for n, m in models.items() if m["instance_kind"] == "KIND_CPU"]
    plans = [n for n, m in models.items() if m["format"] == "plan"]
    openvino = [n for n, m in models.items() if m["format"] == "openvino"]
    engine = record.get("engine") or {}
    trt = f" (these were built with TensorRT {engine['tensorrt']})" if engine.get("tensorrt") else ""
    lines = [
        "# Triton model repository",
        "",
        f"Written by `mfdeploy triton` (mfdeploy {record['mfdeploy_version']}) from the build `{record['build']}`"
        f" (model `{record['model']}`, {record['method']}, ratio {record['ratio']}, pattern {record['pattern']}).",
        "",
        "**Not served here.** This repository was written without a Triton server, and no tritonserver has loaded",
        "it. mfdeploy's tests parse the configs it writes with Triton's own model configuration schema",
        "(tritonclient's `model_config_pb2`) and run the ONNX models it copies with ONNX Runtime against the",
        "build's towers.",
        "",
        "## Models",
        "",
        "| model | platform | instance | inputs and outputs read from | inputs | outputs |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Every model has `max_batch_size: {record['max_batch']}` (B above: the batch axis is not part of `dims`)",
        f"and dynamic batching (`max_queue_delay_microseconds: {record['max_queue_delay_microseconds']}`)"
        + ("; -1 is the dynamic text length." if dynamic_text else "."),
        "The dynamic batcher merges only requests of equal shapes: pad every text to the same length."
        if dynamic_text else "Every text is padded to the model's one text length.",
        f"`{TRITON_PREPROCESSING_DIR}/` holds the checkpoint's tokenizer and image processor files.",
        "",
        "## Start the server",
        "",
        "The NGC image `nvcr.io/nvidia/tritonserver:<YY.MM>-py3` ships the onnxruntime and tensorrt backends.",
        *(["The `openvino` models (`backend: \"openvino\"`, the same ONNX files) need Triton's OpenVINO backend",
           "(github.com/triton-inference-server/openvino_backend) and run on the CPU in its native precision: bf16",
           "on CPUs with AVX-512 BF16 or AMX, else f32. Check that precision on the serving CPU against the fp32",
           "towers first: `mfdeploy eval BUILD --backend openvino` (`--backend openvino-int8` for the INT8 ones)",
           "refuses a tower whose embeddings fall under the gate.", ""] if openvino else []),
        *([f"A TensorRT plan loads only with the TensorRT version it was built with{trt}, on the same GPU model:",
           "pick the release whose TensorRT version matches (NVIDIA's Triton release notes list it).", ""]
          if plans else [""]),
        "From inside this folder:",
        "",
        "    docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD\":/models \\",
        "      nvcr.io/nvidia/tritonserver:<YY.MM>-py3 tritonserver --model-repository=/models",
        "",
        "Without a GPU, drop `--gpus all` and load only the CPU models:",
        "",
        "    tritonserver --model-repository=/models --model-control-mode=explicit "
        + " ".join(f"--load-model={n}" for n in cpu),
        "",
        "## Call it from Python",
        "",
        "`pip install \"tritonclient[http]\" transformers pillow`, then, from inside this folder (with an image of "
        "yours as `photo.jpg`):",
        "",
        *_client(record),
        "",
    ]
    return "\n".join(lines)
