"""The build's reports: `build.json` (the manifest, from the stages' records), `report.md`, and the summary rows
the CLI prints at the end of a build."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfdeploy._version import __version__
from mfdeploy.artifacts.io import file_records, write_json
from mfdeploy.artifacts.layout import BUILD_MANIFEST, REPORT_FILE, SPARSITY_PLOT, TEMP_OWNER
from mfdeploy.pipelines.build_state import BuildState


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):  # powers of 1024, named as such (bench's "ONNX MiB" too)
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _parity_rows(manifest: dict) -> list[tuple[str, str]]:
    rows = []
    for key, label in (("onnx_vs_torch", ""), ("onnx_dense_vs_torch", "dense ")):
        p = (manifest.get("parity") or {}).get(key) or {}
        for tower in ("vision", "text"):
            t = p.get(tower) or (p.get("towers") or {}).get(tower)
            if isinstance(t, dict):
                cos = t.get("min_cosine")
                err = t.get("max_abs_error", t.get("max_abs_err"))
                rows.append((f"parity {label}{tower} (ORT vs torch)",
                             f"min cosine {cos:.6f}, max abs err {err:.2e}" if cos is not None and err is not None
                             else str(t)))
    return rows


def trtexec_lines(engine: dict, where: str) -> list[str]:
    """The skipped-engine advice: the reason, then the shell lines (`cd WHERE`, `mkdir -p`, the commands).

    One command per line, never wrapped and shell-quoted (`trtexec_script`), so each can be pasted as it is.
    """
    from mfdeploy.exporting.trtexec import trtexec_script

    return [f"TensorRT engines not built: {engine.get('reason', '')}",
            "Build them where a GPU is present by running:", *trtexec_script(engine["trtexec"], where)]


def summary_rows(manifest: dict) -> list[tuple[str, str]]:
    """(what, value) rows shared by the console table and report.md."""
    sp = manifest["sparsity"]
    rows = [
        ("model", str(manifest["model"])),
        ("method", f"{manifest['method']} @ {manifest['ratio']:g} ({manifest['pattern']})"),
        ("sparsity", f"{sp['overall']:.4f} overall; " + ", ".join(f"{k} {v:.4f}"
                                                                  for k, v in sp["per_modality"].items())),
    ]
    if manifest.get("distill"):
        from mfdeploy.pruning.distill import summary

        rows.append(("distillation", summary(manifest["distill"])))
    rows += _parity_rows(manifest)
    ev = manifest.get("evaluation")
    if ev:
        ret = ev["retention"]
        for key, label in (("mean_task_retention", "retention (mean over tasks)"),
                           ("mean_retention", "retention (mean over tasks and retrieval)")):
            if ret.get(key) is not None:
                rows.append((label, f"{ret[key]:.3f}"))
        for task, value in ev["pruned"]["tasks"].items():
            rows.append((f"  {task}", f"{value:.3f} (dense {ev['dense']['tasks'][task]:.3f})"))
        for metric, value in ev["pruned"]["retrieval"].items():
            rows.append((f"  {metric}", f"{value:.3f} (dense {ev['dense']['retrieval'][metric]:.3f})"))
    from mfdeploy.quantize.build import report_rows

    rows += report_rows(manifest)
    eng = manifest.get("engine") or {}
    status = eng.get("status", "unknown")
    rows.append(("TensorRT engines", status + (f": {eng['reason']}" if eng.get("reason") else "")))
    dense = manifest.get("engine_dense")
    if dense:
        rows.append(("TensorRT dense engines (bench baseline)", dense.get("status", "unknown")))
    return rows


def artifact_sizes(manifest: dict) -> list[tuple[str, str]]:
    """(file, size) of the main artifacts (models, engines, masks) a build recorded."""
    return [(name, _size(rec["bytes"])) for name, rec in (manifest.get("artifacts") or {}).items()
            if name.endswith((".onnx", ".plan", ".safetensors", ".onnx.data"))]


def write_report(out: Path, manifest: dict, home: Path | None = None) -> None:
    """Write `report.md` (with the sparsity plot) into a build directory.

    Args:
        out: the folder to write it in (the build's temporary folder while it runs).
        manifest: the build's manifest.
        home: where the build will be (its --out; default `out`): the trtexec commands' folder is given
            relative to it, so the report stays right wherever the build is copied.
    """
    lines = [f"# mfdeploy build: {manifest['method']} @ {manifest['ratio']:g} ({manifest['pattern']})", "",
             "| | |", "|---|---|"]
    lines += [f"| {k.strip()} | {v} |" for k, v in summary_rows(manifest)]
    lines += ["", f"![per-layer sparsity]({SPARSITY_PLOT})", ""]
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != TEMP_OWNER)  # not an artifact
    lines += ["## Artifacts", "", "| file | size |", "|---|---|"]
    lines += [f"| {p.relative_to(out)} | {_size(p.stat().st_size)} |" for p in files]
    eng = manifest.get("engine") or {}
    if eng.get("trtexec"):
        from mfdeploy.exporting.trtexec import trtexec_script

        where = os.path.relpath(os.path.abspath(eng.get("trtexec_cwd", home or out)), os.path.abspath(home or out))
        lines += ["", "## TensorRT engines", "", f"Status: {eng.get('status')}. {eng.get('reason', '')}", "",
                  "Build them on a machine with a GPU and TensorRT, from this build directory (the paths are "
                  "relative to it):", "", "```sh", *trtexec_script(eng["trtexec"], None if where == "." else where),
                  "```"]
    lines += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in manifest["timings"].items()]
    (out / REPORT_FILE).write_text("\n".join(lines) + "\n")


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


def scores(result: dict) -> dict:
    return {"tasks": result.get("tasks", {}), "retrieval": result.get("retrieval", {})}


def _evaluation(records: dict[str, Any], data: str | None) -> dict | None:
    from mfdeploy.eval import retention

    dense, pruned, int8 = (records.get(f"evaluate {v}") for v in ("dense", "pruned", "int8"))
    if dense is None or pruned is None:
        return None
    evaluation = {"data": data, "dense": scores(dense), "pruned": scores(pruned),
                  "retention": retention(pruned, dense)}
    if int8 is not None:
        evaluation.update(int8=scores(int8), retention_int8=retention(int8, dense))
    return evaluation


def write_build_outputs(state: BuildState) -> dict[str, Any]:
    """The report stage: assemble the manifest from the stages' records, write report.md, then build.json.

    build.json is written last: its presence means the build is complete.
    """
    from mfdeploy.pipelines.export import versions

    records = state.records
    prune_json, exported, engine = records["prune"], records["export"], records["engine"]
    engine_dense, quant = records.get("engine dense"), records.get("quantize")
    manifest: dict[str, Any] = {
        "mfdeploy_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": prune_json["model"],
        "family": prune_json.get("family"),
        "conventions": exported.get("conventions"),  # the family's: text inputs and padding, scoring, loss
        "method": prune_json["method"],
        "score": prune_json["score"],
        "budget": prune_json["budget"],
        "ratio": prune_json["ratio"],
        "pattern": prune_json["pattern"],
        "seed": prune_json["seed"],
        # seconds: the activation-statistics pass alone (None for methods without one, e.g. ecoflap
        # and mope, whose steps are timed separately in prune_timings)
        "calibration": {**prune_json["calibration"],
                        "seconds": _rounded(prune_json["timings"].get("calibration_s"))},
        "prune_timings": {k: _rounded(v) for k, v in prune_json["timings"].items()},
        "sparsity": prune_json["sparsity"],
        "budget_by_role": prune_json["budget_by_role"],
        "distill": prune_json.get("distill"),  # recovery (None: not asked)
        "onnx": {"opset": exported.get("opset"), "towers": exported.get("towers")},
        "parity": {"onnx_vs_torch": records["parity"], "onnx_dense_vs_torch": records.get("parity dense"),
                   "engine_vs_onnx": engine.get("parity"),
                   "engine_dense_vs_onnx": engine_dense.get("parity") if engine_dense else None,
                   **int8_parity(quant)},
        "quantize": quant,
        "quantize_skipped": records.get("quantize skipped"),  # {folder: why}: onnx_qdq/ without ModelOpt
        "engine": engine,
        "engine_dense": engine_dense,
        "evaluation": _evaluation(records, state.eval_data),
        "timings": records["timings"],
        "versions": {"mfdeploy": __version__, **versions()},
    }
    if "structure" in prune_json:
        manifest["structure"] = prune_json["structure"]
    write_manifest(state.tmp, manifest, Path(state.cfg.out))
    return manifest


def int8_parity(quant: dict[str, Any] | None) -> dict[str, Any]:
    """build.json's `parity` entries of the quantized folders (`quantize`'s records): none without them."""
    if not quant:
        return {}
    return {"int8_vs_fp32": {k: v["towers"] for k, v in quant.items()},
            "int8_vs_torch": {k: v["vs_torch"] for k, v in quant.items()}}


def write_manifest(tmp: Path, manifest: dict[str, Any], home: Path) -> None:
    """report.md, then build.json with the sha256 of every other file: last, its presence means complete.

    `home`: where the build will be (the report's trtexec commands are relative to it)."""
    manifest.pop("artifacts", None)
    write_report(tmp, manifest, home=home)
    manifest["artifacts"] = file_records(tmp, skip=(BUILD_MANIFEST,))
    write_json(tmp / BUILD_MANIFEST, manifest)
