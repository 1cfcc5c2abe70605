"""Per-layer sparsity plot: one panel per tower, bars grouped by transformer layer and coloured by role."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROLE_ORDER = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
WHOLE_LAYER = "whole layer"  # structured records (MoPE) give one entry per transformer layer
_LAYER_INDEX = re.compile(r"\.(\d+)(?:\.|$)")


def parse_layer_name(name: str) -> tuple[int | None, str]:
    """`vision_model.encoder.layers.3.self_attn.q_proj` -> `(3, "q_proj")`; a block name -> `(3, "whole layer")`.

    The layer is the first numeric part of the qualified name (None when there
    is none); the role is the last part.
    """
    match = _LAYER_INDEX.search(name)
    layer = int(match.group(1)) if match else None
    last = name.rsplit(".", 1)[-1]
    return layer, (WHOLE_LAYER if last.isdigit() else last)


def group_layers(per_layer: dict[str, dict]) -> dict[str, dict[int | None, dict[str, float]]]:
    """modality -> layer index -> role -> sparsity, each in model order."""
    out: dict[str, dict[int | None, dict[str, float]]] = {}
    for name, rec in per_layer.items():
        layer, role = parse_layer_name(name)
        out.setdefault(rec["modality"], {}).setdefault(layer, {})[role] = rec["sparsity"]
    return out


def _roles(grouped: dict[str, dict[int | None, dict[str, float]]]) -> list[str]:
    seen = {r for layers in grouped.values() for roles in layers.values() for r in roles}
    known = [r for r in ROLE_ORDER if r in seen]
    return known + sorted(seen - set(known))


def sparsity_figure(record: dict) -> Figure:
    """The figure of `plot_sparsity`: a panel per modality, x = transformer layer, one bar per role."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    grouped = group_layers(record["sparsity"]["per_layer"])
    roles = _roles(grouped)
    palette = [plt.get_cmap("tab10")(i) for i in range(10)]
    colour = {role: palette[i % len(palette)] for i, role in enumerate(roles)}
    n_layers = max(len(layers) for layers in grouped.values())
    fig, axes = plt.subplots(1, len(grouped), sharey=True, squeeze=False,
                             figsize=(max(6.0, 1.2 + 0.12 * len(roles) * n_layers * len(grouped)), 3.8))
    width = 0.8 / len(roles)
    per_modality = record["sparsity"].get("per_modality", {})
    for ax, (modality, layers) in zip(axes[0], grouped.items()):
        for x, roles_here in enumerate(layers.values()):
            for j, role in enumerate(roles):
                if role in roles_here:
                    ax.bar(x - 0.4 + (j + 0.5) * width, roles_here[role], width=width, color=colour[role])
        ax.set_xticks(range(len(layers)), [f"L{i}" if i is not None else "-" for i in layers])
        ax.set_xlabel(f"{modality} tower: transformer layer")
        ax.axhline(record["ratio"], color="k", lw=0.8, ls="--")
        overall = per_modality.get(modality)
        ax.set_title(modality + (f" (overall {overall:.3f})" if overall is not None else ""), fontsize=10)
    axes[0][0].set_ylim(0, 1)
    axes[0][0].set_ylabel("sparsity")
    handles: list[Any] = [Patch(facecolor=colour[r], label=r) for r in roles]
    handles.append(plt.Line2D([], [], color="k", lw=0.8, ls="--", label=f"target {record['ratio']:g}"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.94))
    how = f"{record['score']} / {record['budget']}" if record.get("budget") else record["pattern"]
    fig.suptitle(f"{record['method']} @ {record['ratio']:g} ({how}): "
                 f"overall {record['sparsity']['overall']:.3f}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def plot_sparsity(record: dict, path: Path) -> Figure:
    """Write the per-layer sparsity plot (`sparsity.png`); returns the (closed) figure.

    Each tower gets a panel; its transformer layers run along x, and within a
    layer each role (q/k/v/out_proj, fc1, fc2) has its own bar and colour, so
    the roles pruned hardest stand out. The dashed line is the target ratio.
    """
    import matplotlib.pyplot as plt

    fig = sparsity_figure(record)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
