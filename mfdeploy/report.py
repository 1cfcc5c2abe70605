"""Human-readable build report (`report.md`) and the summary table printed at the end of a build."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
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
    """The skipped-engine advice: the reason, the folder to run the commands in (`where`), the commands.

    One command per line, never wrapped, so each can be pasted as it is.
    """
    return [f"TensorRT engines not built: {engine.get('reason', '')}",
            f"Build them where a GPU is present by running, inside {where}:", *engine["trtexec"]]


def summary_rows(manifest: dict) -> list[tuple[str, str]]:
    """(what, value) rows shared by the console table and report.md."""
    sp = manifest["sparsity"]
    rows = [
        ("model", str(manifest["model"])),
        ("method", f"{manifest['method']} @ {manifest['ratio']:g} ({manifest['pattern']})"),
        ("sparsity", f"{sp['overall']:.4f} overall; " + ", ".join(f"{k} {v:.4f}"
                                                                  for k, v in sp["per_modality"].items())),
    ]
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


def summary_table(manifest: dict, out: Path) -> Table:
    table = Table(title=f"mfdeploy build -> {out}")
    table.add_column("")
    table.add_column("")
    for k, v in summary_rows(manifest):
        table.add_row(k, v)
    for name, rec in (manifest.get("artifacts") or {}).items():
        if name.endswith((".onnx", ".plan", ".safetensors", ".onnx.data")):
            table.add_row(name, _size(rec["bytes"]))
    return table


def write_report(out: Path, manifest: dict) -> None:
    """Write `report.md` (with the sparsity plot) into a build directory."""
    lines = [f"# mfdeploy build: {manifest['method']} @ {manifest['ratio']:g} ({manifest['pattern']})", "",
             "| | |", "|---|---|"]
    lines += [f"| {k.strip()} | {v} |" for k, v in summary_rows(manifest)]
    lines += ["", "![per-layer sparsity](sparsity.png)", ""]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    lines += ["## Artifacts", "", "| file | size |", "|---|---|"]
    lines += [f"| {p.relative_to(out)} | {_size(p.stat().st_size)} |" for p in files]
    eng = manifest.get("engine") or {}
    if eng.get("trtexec"):
        lines += ["", "## TensorRT engines", "", f"Status: {eng.get('status')}. {eng.get('reason', '')}", "",
                  "Build them on a machine with a GPU and TensorRT, inside this build directory's `onnx/` "
                  "(the file names are relative to it):", "", "```sh", "cd onnx"]
        lines += list(eng["trtexec"]) + ["```"]
    lines += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in manifest["timings"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
