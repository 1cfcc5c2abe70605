"""Which nodes of a tower graph get quantized, and which stay in float and why.

The towers' time is in the MatMuls with constant weights (q/k/v/out_proj,
fc1, fc2): those are quantized, and so is the vision tower's patch
embedding Conv (a quarter of the small bundled model's weights). The attention score MatMuls (two
activations), the embedding gathers, LayerNorm, the end-of-text pooling
and the embedding head + L2 normalisation stay float, so the embedding
that leaves the tower is computed exactly from the last hidden state. The
head is CLIP's final projection (`visual_projection`, `text_projection`) or
SigLIP's `head` (the vision attention-pooling head, the text head linear):
they run on one pooled token (the pooling head's keys and values aside),
and every embedding passes through them.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

FLOAT_KEEP_REASONS = {
    "projection": "embedding head (final projection or pooling head) before L2 normalisation: kept exact so the "
                  "embedding keeps its direction",
    "activation_matmul": "attention score/value MatMul of two activations: no weight to quantize, small share of time",
    "user": "kept in float on request (--keep-float)",
    "sensitive": "sensitive layer: quantizing it alone moved the embedding most (see sensitivity)",
}


WEIGHT_OPS = ("MatMul", "Gemm", "Conv")


def weight_nodes(path: Path) -> list[str]:
    """Names of the MatMul/Gemm/Conv nodes whose second input is a constant weight, in graph order."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in consts]


def _is_projection(name: str) -> bool:
    """A node of the embedding head: CLIP's `/visual_projection/MatMul`, or under SigLIP's `head` module
    (`/vision_model/head/mlp/fc1/MatMul`, `/text_model/head/MatMul`)."""
    parts = name.split("/")  # torch.onnx names nodes after their module path
    return (len(parts) >= 2 and parts[-2].endswith("projection")) or "head" in parts[1:-1]


def plan_nodes(path: Path, keep_float: list[str] | None = None,
               sensitive: list[str] | None = None) -> dict[str, Any]:
    """Split a tower's weight nodes into quantized and float-kept nodes.

    Args:
        path: the fp32 tower.
        keep_float: fnmatch globs of node names the user keeps in float.
        sensitive: node names found sensitive (kept in float).

    Returns:
        `{"quantize": [names], "float": {name: reason}}`.
    """
    globs = list(keep_float or [])
    unsafe = set(sensitive or [])
    quantize, kept = [], {}
    for name in weight_nodes(path):
        if _is_projection(name):
            kept[name] = FLOAT_KEEP_REASONS["projection"]
        elif any(fnmatch.fnmatchcase(name, g) for g in globs):
            kept[name] = FLOAT_KEEP_REASONS["user"]
        elif name in unsafe:
            kept[name] = FLOAT_KEEP_REASONS["sensitive"]
        else:
            quantize.append(name)
    return {"quantize": quantize, "float": kept}
