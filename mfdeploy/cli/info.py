"""`mfdeploy info`: a model's towers, parameter counts, prunable layers and input limits."""

from __future__ import annotations

from mfdeploy.cli.options import ModelArg
from mfdeploy.cli.render import info_table, out
from mfdeploy.cli.root import app


@app.command()
def info(model: ModelArg = None) -> None:
    """Print a model's towers, parameter counts, prunable layers and input limits."""
    from mfdeploy.models import load

    adapter = load(model, need_processors=False)  # sizes come from config.json; no tokenizer needed
    counts = adapter.parameter_counts()
    layers = adapter.prunable_layers()
    label = adapter.pruned_label
    rows = [(modality, sum(p.numel() for p in adapter.tower_module(modality).parameters()),
             sum(1 for v in layers.values() if v.modality == modality), counts.get("prunable_" + modality, 0))
            for modality in ("vision", "text")]
    out.print(info_table(f"{adapter.model_id}" + (" (pruned)" if label else ""), rows))
    if label:
        out.print(f"pruned: {label}", highlight=False, soft_wrap=True)
    family = adapter.family
    out.print(f"family: {family.name} ({family.title}; pairs scored by {family.scoring})", highlight=False,
              soft_wrap=True)
    out.print(f"pooling: {family.pooling}; kept dense: {', '.join(family.head)}", highlight=False, soft_wrap=True)
    out.print(f"text input: {family.text_convention(adapter.max_text_len)}", highlight=False, soft_wrap=True)
    out.print(f"total parameters: {counts['total']:,}")
    out.print(f"prunable layers: {len(layers)}")
    out.print(f"image size: {adapter.image_size}x{adapter.image_size}")
    out.print(f"max text length: {adapter.max_text_len} tokens")
    out.print(f"embedding dim: {adapter.embed_dim}")
