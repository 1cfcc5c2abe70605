"""Per-layer sparsity plot, vision vs text."""

from __future__ import annotations

from pathlib import Path


def plot_sparsity(record: dict, path: Path) -> None:
    """Bar chart of each prunable layer's sparsity, coloured by modality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_layer = record["sparsity"]["per_layer"]
    names = list(per_layer)
    colours = {"vision": "tab:blue", "text": "tab:orange", "fusion": "tab:green"}
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 3.6))
    for i, n in enumerate(names):
        ax.bar(i, per_layer[n]["sparsity"], color=colours.get(per_layer[n]["modality"], "grey"), width=0.8)
    for mod, c in colours.items():
        if any(v["modality"] == mod for v in per_layer.values()):
            ax.bar([], [], color=c, label=mod)
    ax.axhline(record["ratio"], color="k", lw=0.8, ls="--", label=f"target {record['ratio']:g}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity")
    ax.set_xlabel("prunable layer (model order)")
    ax.set_title(f"{record['method']} @ {record['ratio']:g} ({record['pattern']}): "
                 f"overall {record['sparsity']['overall']:.3f}")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
