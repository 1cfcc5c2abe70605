"""Pipelines: the stages of `mfdeploy prune`, `export` and `build` as data, artifacts in and out.

- `prune.run_prune`: prune.json, masks.safetensors, pruned/ (the algorithms are `mfdeploy.pruning`'s);
- `export.export_model`: export.json and the towers;
- `build.run_build`: build.json (`build.STAGES` lists every stage in order);
- `gate.parity_gate`: the one parity gate of every exported folder;
- `report`: report.md and the summary.

Modules are imported on use: `import mfdeploy.pipelines` loads nothing heavy.
"""

__all__ = ["build", "export", "gate", "prune", "report"]
