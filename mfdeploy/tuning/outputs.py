"""What a finished tune writes: tune.json, tune.md, pareto.png (`report`), and `DIR/best`, the pick's build."""

from __future__ import annotations

import json
import shutil
from typing import Any

from mfdeploy.artifacts.io import write_json
from mfdeploy.errors import UserError
from mfdeploy.tuning import measure
from mfdeploy.tuning.config import TuneResult
from mfdeploy.tuning.records import Record
from mfdeploy.tuning.search import Search

BEST_DIR = "best"
PICK_FILE = "tune_pick.json"
TUNE_JSON = "tune.json"


def finish(search: Search, spent_s: float | None, forced: tuple[Record, str] | None = None) -> TuneResult:
    """Front, pick, `DIR/best` and the reports of a search; `forced`: the (record, reason) `--pick` chose.

    Raises:
        UserError: nothing meets the constraints (after the reports are written; the message names the closest).
    """
    from mfdeploy.bench.stability import load_average
    from mfdeploy.tuning.front import choose, pareto_front
    from mfdeploy.tuning.report import write_reports

    front = pareto_front(search.records)
    pick, why = forced if forced is not None else choose(search.records, search.cfg.constraints)
    if pick is None and not any(r["state"] == "complete" for r in search.records) and search.stopped:
        why += f"; the search stopped on {search.stopped}"  # e.g. a budget spent before the first trial ended
    summary = _summary(search, front, pick, why, spent_s, load_average())
    if pick is not None:
        _build_best(search, pick, why)
    elif (search.out / BEST_DIR).is_dir():  # an earlier run's pick, made under other constraints: tune.json
        shutil.rmtree(search.out / BEST_DIR)  # now says there is none, and best/ must not say otherwise
    write_reports(search.out, summary)
    result = TuneResult(search.records, front, pick, why, search.out, summary)
    if pick is None:
        raise UserError(why)
    search.say(f"tune: pick #{pick['number']} {pick['key']}: {why}; built into {search.out / BEST_DIR}; serve it "
               f"with: {summary['pick']['serve']}")
    return result


def serve_command(search: Search, pick: Record) -> str:
    """The command that serves the pick as it was measured (backend and precision: OpenVINO's `auto` would be
    bf16 on a BF16 CPU, so an fp32 pick names f32; torch-cuda serves fp16, its default)."""
    precision, backend = pick["config"]["precision"], search.backend
    where = search.out / BEST_DIR
    if precision == "int8":
        return f"mfdeploy serve {where} --backend {'ort-int8' if backend == 'ort-cpu' else backend + '-int8'}"
    if backend == "openvino":
        return f"mfdeploy serve {where} --backend openvino --precision {'bf16' if precision == 'bf16' else 'f32'}"
    if precision == "bf16":
        return f"mfdeploy serve {where} --backend {backend} --dtype bfloat16"
    return f"mfdeploy serve {where} --backend {backend}"


def _summary(search: Search, front: list[Record], pick: Record | None, why: str, spent_s: float | None,
             load: list[float] | None) -> dict[str, Any]:
    previous: dict[str, Any] = {}
    if spent_s is None and (search.out / TUNE_JSON).is_file():  # --pick: the search's own figures stay
        try:
            previous = json.loads((search.out / TUNE_JSON).read_text())
        except ValueError:
            previous = {}
    cfg = search.cfg
    return {
        "model": cfg.model or "mfdeploy/clip-shapes",
        "backend": search.backend,
        "batch_size": cfg.batch_size,
        "eval": search.data,
        "constraints": cfg.constraints.effective().describe(),
        "space": search.space.describe(),
        "dense": {"quality": measure.quality_of(search.dense["full"], search.dense["full"]),
                  "speed": _dense_speed(search.records)},
        "trials": search.records,
        "front": [r["number"] for r in front],
        "pick": {"number": pick["number"] if pick else None, "key": pick["key"] if pick else None, "why": why,
                 "serve": serve_command(search, pick) if pick else None},
        "time": previous.get("time") if spent_s is None else {
            "budget_s": cfg.time_budget_min * 60, "spent_s": round(spent_s, 1), "stopped": search.stopped},
        "load_avg": load,
    }


def _dense_speed(records: list[Record]) -> dict[str, Any]:
    """The dense towers' p50, vision + text, from the latest trial timed beside them (each trial times dense)."""
    timed = [r["speed"] for r in records if r["state"] == "complete" and not r["speed"].get("shared_with")]
    if not timed:
        return {}
    return {"latency_ms": timed[-1]["dense_latency_ms"], "load_avg": timed[-1].get("load_avg_end"),
            "note": "timed beside each candidate; this is the last such run"}


def _build_best(search: Search, pick: Record, why: str) -> None:
    """`DIR/best`: a copy of the pick's build (a complete `mfdeploy build`), with `tune_pick.json` saying why."""
    from mfdeploy.artifacts.io import atomic_dir
    from mfdeploy.artifacts.layout import BUILD_MANIFEST
    from mfdeploy.models.integrity import verify_artifacts

    source = search.out / pick["build"]
    if not (source / BUILD_MANIFEST).is_file():
        raise UserError(f"{source}: the build of #{pick['number']} {pick['key']} is gone (was {search.out / 'work'} "
                        "deleted?); re-run the tune with --force to measure again")
    try:  # every file its build.json records, as measured: a damaged build is named, never published as best/
        verify_artifacts(source, ("",))
    except UserError as e:
        raise UserError(f"the build of #{pick['number']} {pick['key']} was changed after tune measured it: {e} "
                        "(or re-run the tune with --force to measure again)") from None
    with atomic_dir(search.out / BEST_DIR, force=True) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        write_json(tmp / PICK_FILE, {"trial": pick["number"], "key": pick["key"], "config": pick["config"],
                                     "backend": search.backend, "why": why, "quality": pick["quality"],
                                     "speed": pick["speed"], "size_mb": pick.get("size_mb"),
                                     "serve": serve_command(search, pick)})


__all__ = ["BEST_DIR", "PICK_FILE", "finish", "serve_command"]
