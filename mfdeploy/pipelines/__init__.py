"""Pipelines: the stages of `mfdeploy export` and `mfdeploy build` as data, artifacts in and out.

`export.export_model` (export.json), `build.run_build` (build.json; `build.STAGES` lists every stage in
order), `gate.parity_gate` (the one parity gate of every exported folder), `report` (report.md, the summary).
Modules are imported on use: `import mfdeploy.pipelines` loads nothing heavy.
"""

__all__ = ["build", "export", "gate", "report"]
