"""The search of `mfdeploy tune`: which candidates run, in which order, and how each is measured.

How the search spends its time (docs/guides/tune.md says the same for users):

1. **Order.** A brute-force Optuna walk of the space's grid (`mfdeploy.tuning.study` says why), after the first
   unstructured method and MoPE at the lowest and middle ratios, at every precision (the front's corners).
2. **Two rungs.** A candidate's pruned model is first evaluated with PyTorch fp32 on a fifth of the shapes
   suite (the whole of other data). It stops there (state "screened") when it cannot reach the front: a
   finished trial with its shapes and precision, hence its speed, lost more than `SCREEN_SLACK` points fewer on
   that rung; or when its drop is far outside the bound: over `FAR` x (`--max-drop` + `SCREEN_SLACK`), checked
   before the model is exported. The rest are exported, quantized, evaluated in full through the backend and
   precision they would be served with, and timed.
3. **Reuse.** Candidates that share a pruning configuration share one build (pruned once, exported once,
   quantized once) under `DIR/work/builds/`; candidates whose speed cannot differ (unstructured masks on a
   dense backend: the shapes are the dense ones) share one timing, and the record says whose; MoPE's module
   scores are cached under `DIR/cache/mope` for any later prune that reaches the same layers.
4. **Budget.** A trial starts only if the median time of the finished ones fits in what is left of
   `--time-budget` (the first always starts); past that, only a candidate whose build is already made may run.
5. **Resume.** Each finished trial is one line of `DIR/trials.jsonl` (`mfdeploy.tuning.journal`); a killed tune
   re-run with the same arguments rebuilds the study from it and never repeats a finished trial.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import BUILD_MANIFEST, ONNX_DENSE_DIR
from mfdeploy.errors import MfdeployError, WriteError
from mfdeploy.tuning import journal, measure
from mfdeploy.tuning.config import TuneConfig
from mfdeploy.tuning.records import Record
from mfdeploy.tuning.space import FIXED_BUDGET, Candidate, Space
from mfdeploy.tuning.study import make_study, suggest

SCREEN_SLACK = 2.0  # points: a fifth of the shapes suite measures a drop within about this of the full suite
FAR = 3.0  # a first-rung drop over FAR x (--max-drop + SCREEN_SLACK) is too far from the bound to be worth more
WORK_DIR = "work"
DENSE_JSON = "dense.json"
CACHE_DIR = "cache"  # reusable scores (MoPE's module errors) that outlive a trial's build


class OutOfTime(Exception):
    """The next candidate needs a build the time left cannot hold."""


class Screened(Exception):
    """A candidate stopped at the first rung (its screen record is attached)."""

    def __init__(self, screen: dict):
        super().__init__(screen["reason"])
        self.screen = screen


class Search:
    """One tune: the study, the trials it runs, the dense reference (see the module docstring)."""

    def __init__(self, cfg: TuneConfig, space: Space, backend: str, data: str, out: Path, records: list[Record],
                 say: Callable[[str], None], calib_samples: int | None = None):
        self.cfg, self.space, self.backend, self.data, self.out, self.say = cfg, space, backend, data, out, say
        # the calibration pairs every prune (and INT8 calibration) reads: the same for each candidate, so counted
        # once a tune (`run_tune` passes what its checks counted; None: at the first build)
        self.calib_samples = calib_samples
        # a trial that failed is not a finished one: it runs again (its number stays taken in the journal)
        self.records = [r for r in records if r["state"] != "failed"]
        self.taken = max((r["number"] for r in records), default=-1)
        self.by_key = {r["key"]: r for r in self.records}
        self.work = out / WORK_DIR
        self.stopped = ""
        self.dense: dict[str, Any] = {}

    def _study(self):
        return make_study(self.records, [c for c in self._seeds() if c.key not in self.by_key], self.space,
                          self.cfg.seed)

    def _seeds(self) -> list[Candidate]:
        ratios = sorted(self.space.ratios)
        ratios = list(dict.fromkeys([ratios[0], ratios[len(ratios) // 2]]))  # the lowest and the middle one
        unstructured = [m for m in self.space.methods if m not in FIXED_BUDGET]
        methods = unstructured[:1] + [m for m in self.space.methods if m == "mope"]
        steps = min(self.space.distill_steps)
        return [Candidate(m, r, p, self.space.budgets[0] if m not in FIXED_BUDGET else None, None, steps)
                for r in ratios for m in methods for p in self.space.precisions]

    def run(self, started: float) -> None:
        all_keys = {c.key for c in self.space.candidates()}
        budget = self.cfg.time_budget_min * 60
        plural = "" if len(all_keys) == 1 else "s"
        self.say(f"tune: {len(all_keys)} candidate{plural} in the {self.space.name} space, {len(self.records)} "
                 f"already done in {self.out}, {self.cfg.time_budget_min:g} min budget")
        self._dense()
        study = self._study()
        while True:
            left = budget - (time.monotonic() - started)
            done = all_keys & set(self.by_key)
            if done == all_keys:
                self.stopped = "every candidate of the space was measured"
                break
            spent = [r["seconds"]["total"] for r in self.records if r.get("seconds", {}).get("run_here")]
            estimate = sorted(spent)[len(spent) // 2] if spent else 0.0
            # past the estimate, only a candidate whose build is made (an evaluation and a timing) may still run
            reused = [r["seconds"]["total"] for r in self.records if r["seconds"].get("build", 1) < 1]
            cheap = sorted(reused)[len(reused) // 2] if reused else 0.0  # unknown: ask, and see
            if left <= 0 or (spent and min(estimate, cheap) > left):
                self.stopped = (f"time budget: {max(left, 0):.0f} s left, a trial takes about {estimate:.0f} s"
                                if spent else f"time budget: spent before the first trial ({max(left, 0):.0f} s left)")
                break
            # a candidate's own failure is recorded by `_measure`; anything else (a full disk) ends the tune
            built_only = bool(spent) and estimate > left
            study.optimize(partial(self._objective, started=started, budget=budget, built_only=built_only),
                           n_trials=1, catch=(OutOfTime,))
            if study.trials[-1].user_attrs.get("out_of_time"):
                self.stopped = (f"time budget: {max(left, 0):.0f} s left, and the next candidate needs a build "
                                f"(about {estimate:.0f} s)")
                break

    def _objective(self, trial, started: float, budget: float, built_only: bool) -> tuple[float, float]:
        import optuna

        cand = suggest(trial, self.space)
        if built_only and not (self._build_path(cand) / BUILD_MANIFEST).is_file():
            trial.set_user_attr("out_of_time", True)  # not journalled: it runs in full next time
            raise OutOfTime(cand.key)
        trial.set_user_attr("key", cand.key)
        if cand.key in self.by_key:  # a re-proposed point (several workers, or the grid wrapped): nothing to run
            raise optuna.TrialPruned(f"{cand.key} already measured")
        record = self._measure(cand)
        self._add(record)
        left = max(0.0, budget - (time.monotonic() - started))
        state, q, s = record["state"], record.get("quality") or {}, record.get("speed") or {}
        detail = (f"retention {q['retention']:.1%}, drop {q['drop_points']:.2f} points, {s['speedup']:.2f}x"
                  + (" (shared timing)" if s["shared_with"] else "") if state == "complete" else record["reason"])
        self.say(f"[{len(self.by_key)}/{self.space.size()}] #{record['number']} {cand.key}: {state}: {detail} | "
                 f"front: {len(self._front())} point(s) | {left / 60:.1f} min left")
        if state != "complete":
            raise optuna.TrialPruned(record.get("reason", state))
        return record["quality"]["retention"], record["speed"]["speedup"]

    def _add(self, record: Record) -> None:
        journal.append_record(self.out, record)
        self.records.append(record)
        self.by_key[record["key"]] = record

    def _front(self) -> list[Record]:
        from mfdeploy.tuning.front import pareto_front

        return pareto_front(self.records)

    # measuring one candidate ------------------------------------------------------------------------------------
    def _measure(self, cand: Candidate) -> Record:
        t0 = time.monotonic()
        # after the journal's damaged lines were skipped, len(records) can be a number a kept trial has
        number = max([self.taken, *(r.get("number", -1) for r in self.records)]) + 1
        record: Record = {"number": number, "key": cand.key, "config": cand.config(), "state": "complete",
                          "seconds": {"run_here": True}}
        seconds = record["seconds"]
        try:
            earlier = self._same_prune(cand)
            if earlier is not None:
                record["screen"] = earlier["screen"]
                if earlier["screen"].get("far"):
                    record.update(state="screened", reason=f"{earlier['reason']} (the same pruned model as #"
                                                           f"{earlier['number']})")
                    return record
            t = time.monotonic()
            build_dir = self._build(cand, record)
            seconds["build"] = round(time.monotonic() - t, 2)
            dominated = self._dominated(cand, record.get("screen"))
            if dominated:
                record.update(state="screened", reason=dominated, build=str(build_dir.relative_to(self.out)))
                return record
            t = time.monotonic()
            result = measure.evaluate(build_dir, self.data, self.backend, cand.precision)
            record["quality"] = {**measure.quality_of(result, self.dense["full"]),
                                 "backend": result.get("backend"), "precision": result.get("precision")}
            seconds["evaluate"] = round(time.monotonic() - t, 2)
            t = time.monotonic()
            record["speed"] = self._speed(cand, build_dir)
            seconds["time"] = round(time.monotonic() - t, 2)
            record["size_mb"] = measure.size_mb(build_dir, self.backend, cand.precision)
            record["build"] = str(build_dir.relative_to(self.out))
        except Screened as e:
            record.update(state="screened", reason=str(e), screen=e.screen)
        except WriteError:
            raise  # the tune directory, not the candidate: every later trial would fail the same way
        except MfdeployError as e:
            record.update(state="failed", reason=str(e))
        finally:
            seconds["total"] = round(time.monotonic() - t0, 2)
        return record

    def _same_prune(self, cand: Candidate) -> Record | None:
        for r in self.records:
            if Candidate(**r["config"]).prune_key == cand.prune_key and r["state"] in ("complete", "screened") \
                    and r.get("screen"):
                return r
        return None

    def _dominated(self, cand: Candidate, screen: dict | None) -> str | None:
        """Why `cand` cannot reach the front, or None: a finished trial with its shapes and precision (hence its
        speed) lost clearly fewer points on the first rung."""
        if not screen:
            return None
        shapes = cand.shapes_key(self.backend)
        for r in self.records:
            if r["state"] != "complete" or not r.get("screen") or Candidate(**r["config"]).shapes_key(self.backend) \
                    != shapes:
                continue
            if screen["drop_points"] > r["screen"]["drop_points"] + SCREEN_SLACK:
                return (f"cannot reach the front: #{r['number']} {r['key']} runs at the same speed "
                        f"(same shapes and precision) and lost {r['screen']['drop_points']:.2f} points on the first "
                        f"rung to this one's {screen['drop_points']:.2f}")
        return None

    def _build_path(self, cand: Candidate) -> Path:
        return self.work / "builds" / hashlib.sha256(cand.prune_key.encode()).hexdigest()[:12]

    def _build(self, cand: Candidate, record: Record) -> Path:
        """The build of the candidate's pruning configuration: made once (screened on the way), then reused."""
        from mfdeploy.pipelines.build import BuildConfig, run_build
        from mfdeploy.pipelines.build_state import Stage
        from mfdeploy.pruning import PruneConfig

        out = self._build_path(cand)
        out.parent.mkdir(parents=True, exist_ok=True)
        if (out / BUILD_MANIFEST).is_file():
            return out
        mope = {"mope_neuron_group": self.space.mope.get("neuron_group", PruneConfig.mope_neuron_group),
                "mope_depth_share": self.space.mope.get("depth_share", PruneConfig.mope_depth_share),
                "mope_cache": self.out / CACHE_DIR / "mope"} if cand.method == "mope" else {}  # others refuse them
        prune = PruneConfig(ratio=cand.ratio, model=self.cfg.model, method=cand.method, budget=cand.budget,
                            pattern=cand.pattern, calib=self.cfg.calib, seed=self.cfg.seed,
                            distill_steps=cand.distill_steps, show_progress=False, **mope,
                            calib_samples=self._calib_samples())

        def screen(state) -> dict:
            t = time.monotonic()
            result = measure.evaluate(state.model("pruned"), self.data, self.backend, "fp32", screen=True)
            quality = measure.quality_of(result, self.dense["screen"])
            found = {"metric": quality["metric"], "value": quality["value"], "drop_points": quality["drop_points"],
                     "retention": quality["retention"], "seconds": round(time.monotonic() - t, 2),
                     "what": "PyTorch fp32" + (f", {measure.SCREEN_IMAGES} images per task" if self.data == "shapes"
                                               else "")}
            record["screen"] = found
            bound = self.cfg.constraints.effective().max_drop
            if bound is not None and quality["drop_points"] > FAR * (bound + SCREEN_SLACK):
                found["far"] = True
                found["reason"] = (f"drop {quality['drop_points']:.2f} points on the first rung, over "
                                   f"{FAR:g}x (--max-drop {bound:g} + {SCREEN_SLACK:g})")
                raise Screened(found)
            return found

        # INT8: only the towers the backend serves (onnx_int8/), not TensorRT's onnx_qdq/ that no trial measures
        cfg = BuildConfig(prune=prune, out=out, dense_onnx=False, evaluate=False, force=True,
                          max_batch=max(32, self.cfg.batch_size), int8="int8" in self.space.precisions,
                          int8_targets=measure.INT8_TARGETS.get(self.backend, ()))
        run_build(cfg, extra=[("prune", Stage("screen", screen))])
        if self.backend in measure.ONNX_BASED:
            measure.link_tree(self._dense_onnx(), out / ONNX_DENSE_DIR)
        return out

    def _calib_samples(self) -> int:
        if self.calib_samples is None:
            self.calib_samples = measure.calib_samples(self.cfg.calib, self.space)
        return self.calib_samples

    def _speed(self, cand: Candidate, build_dir: Path) -> dict[str, Any]:
        shapes = cand.shapes_key(self.backend)
        for r in self.records:
            if r["state"] == "complete" and Candidate(**r["config"]).shapes_key(self.backend) == shapes:
                return {**r["speed"], "shared_with": r["key"],
                        "shared_why": "same tower shapes and precision on a dense backend (an unstructured mask "
                                      "multiplies zeros): one timing serves both"
                        if "dense shapes" in shapes else "same structure and precision"}
        from mfdeploy.platform import physical_cores

        return measure.time_candidate(build_dir, self.backend, cand.precision, self.cfg.batch_size,
                                      self.cfg.threads or physical_cores())

    # the dense reference ----------------------------------------------------------------------------------------
    def _dense(self) -> None:
        self.dense = measure.dense_reference(self.out / DENSE_JSON, self.cfg.model, self.data, self.backend, self.say)

    def _dense_onnx(self) -> Path:
        return measure.dense_onnx(self.work / "dense_onnx", self.cfg.model)


__all__ = ["SCREEN_SLACK", "Screened", "Search"]
