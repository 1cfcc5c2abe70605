"""What an export records about its model, and the specs and example inputs its towers are traced with.

Read off the adapter: the model sizes (ONNX metadata and export.json), what
the weights are (dense, or pruned how), the family's conventions (which inputs
the text tower takes, how it is padded, how pairs are scored), and the tower
specs those conventions give.
"""

from __future__ import annotations

from typing import Any

import torch

from mfdeploy.exporting.spec import tower_specs

# Two captions of different lengths, so the traced text graph contains padding (attention_mask == 0).
EXAMPLE_CAPTIONS = ("a photo of a red circle.",
                    "a photo of a small blue square at the top left and a large green star.")


def family_metadata(adapter) -> dict[str, str]:
    """The family's conventions as ONNX metadata: `family`, `scoring`, `text_padding`, `text_inputs` (comma-joined)."""
    conv = adapter.family.conventions()
    return {"family": conv["family"], "scoring": conv["scoring"], "text_padding": conv["text_padding"],
            "text_inputs": ",".join(conv["text_inputs"])}


def model_sizes(adapter) -> dict[str, int]:
    """The sizes an exported model is bound by, recorded in the ONNX metadata and export.json."""
    sizes = {"image_size": int(adapter.image_size), "max_text_len": int(adapter.max_text_len),
             "embed_dim": int(adapter.embed_dim)}
    tok = adapter.tokenizer
    sizes["vocab_size"] = len(tok)
    for key in ("pad_token_id", "eos_token_id"):
        if getattr(tok, key, None) is not None:
            sizes[key] = int(getattr(tok, key))
    return sizes


def pruning_metadata(adapter) -> dict[str, str]:
    """What the exported weights are: `pruned`, `method`, `ratio`, `pattern` (a dense model says "dense")."""
    origin = getattr(adapter, "origin", None)
    if not origin:
        return {"pruned": "false", "method": "dense", "ratio": "0.0", "pattern": "dense"}
    # the ratio as a float string, so `model_limits` (which reads integer-valued metadata as sizes) skips it
    return {"pruned": "true", "method": str(origin.get("method")), "ratio": str(float(origin.get("ratio", 0.0))),
            "pattern": str(origin.get("pattern") or "unstructured")}


def example_inputs(adapter) -> dict[str, dict[str, torch.Tensor]]:
    """The inputs the towers are traced with: batch 2, and the example captions tokenized as the family does
    (padded to the longer one, or to the fixed length); a tower's spec picks the ones it takes."""
    g = torch.Generator().manual_seed(0)
    size = adapter.image_size
    pixel_values = torch.randn(2, 3, size, size, generator=g)  # [B,3,H,W]
    input_ids, attention_mask = adapter.tokenize(list(EXAMPLE_CAPTIONS))  # [B,L] int64
    return {"vision": {"pixel_values": pixel_values},
            "text": {"input_ids": input_ids, "attention_mask": attention_mask}}


def adapter_specs(adapter, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The tower specs of this model: its family's inputs, and the text length fixed where the family fixes it."""
    fixed = {"text_len": adapter.fixed_text_len} if adapter.fixed_text_len is not None else None
    return tower_specs(sizes, adapter.tower_inputs, fixed)
