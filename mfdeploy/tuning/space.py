"""The search space of `mfdeploy tune`: what a candidate is, which ones a backend can run, and the named spaces.

A candidate is a pruning configuration (method, ratio, layer budget, N:M pattern, distillation steps) served at
one precision. The space is the product of the lists below, with the combinations that cannot exist left out
(MoPE and ECoFLaP have their own budgets and no N:M pattern; an N:M pattern fixes the ratio; a precision or a
pattern the backend does not run). `default` and `quick` are documented in docs/guides/tune.md; a TOML file
narrows or widens them:

    methods = ["multiflow", "mope"]
    ratios = [0.5, 0.75]
    budgets = ["default"]            # the method's own; or uniform, global, modality, ecoflap
    patterns = ["none"]              # "2:4" only where the backend runs sparse kernels
    precisions = ["fp32", "int8"]
    distill_steps = [0]
    [mope]
    neuron_group = 256
    depth_share = 0.0
    [calibration]
    samples = 64
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomllib's source, published as tomli
    import tomli as tomllib

from mfdeploy.errors import UserError, is_number, is_whole

# backend -> the precisions tune can serve on it: (what it is called, how the backend is told)
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "ort-cpu": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "torch": ("fp32", "bf16"),
    "torch-cuda": ("fp16",),  # its runner's precision (fp16), the dense reference timed alike
}
ALIASES = {"ort-int8": ("ort-cpu", "int8"), "openvino-int8": ("openvino", "int8")}  # name -> (backend, precision)
SPARSE_BACKENDS: tuple[str, ...] = ()  # backends tune drives that run N:M sparse kernels (none yet: trt is not one)
STRUCTURED = ("mope",)  # methods that change the shapes of the towers (their speed can differ from dense)
METHODS = ("multiflow", "magnitude", "wanda", "ecoflap", "mope")
FIXED_BUDGET = ("ecoflap", "mope")  # methods whose budget is part of the method
LISTS = ("methods", "ratios", "budgets", "patterns", "precisions", "distill_steps")  # the TOML keys that are lists


@dataclass(frozen=True)
class Candidate:
    """One point of the space: a pruning configuration served at one precision."""

    method: str
    ratio: float
    precision: str
    budget: str | None = None  # None: the method's default
    pattern: str | None = None  # "2:4" or None (unstructured)
    distill_steps: int = 0

    @property
    def prune_key(self) -> str:
        """What the pruned model depends on (candidates sharing it share one pruned, exported, quantized build)."""
        return f"{self.method} r={self.ratio:g}" + (f" budget={self.budget}" if self.budget else "") + \
            (f" {self.pattern}" if self.pattern else "") + (f" distill={self.distill_steps}" if self.distill_steps
                                                             else "")

    @property
    def key(self) -> str:
        """Unique within a tune: the prune key and the precision."""
        return f"{self.prune_key} {self.precision}"

    def shapes_key(self, backend: str) -> str:
        """Candidates with the same shapes key run at the same speed: an unstructured mask multiplies zeros on a
        dense backend, so every unstructured candidate has the dense shapes; a structured one has its own."""
        if self.method in STRUCTURED:
            return f"{self.method} r={self.ratio:g} {self.precision}"
        if self.pattern and backend in SPARSE_BACKENDS:
            return f"{self.pattern} {self.precision}"
        return f"dense shapes {self.precision}"

    def config(self) -> dict[str, Any]:
        """As the trial record stores it."""
        return asdict(self)


@dataclass(frozen=True)
class Space:
    """The lists a search draws from (see the module docstring)."""

    name: str
    methods: tuple[str, ...]
    ratios: tuple[float, ...]
    precisions: tuple[str, ...]
    budgets: tuple[str | None, ...] = (None,)
    patterns: tuple[str | None, ...] = (None,)
    distill_steps: tuple[int, ...] = (0,)
    mope: dict[str, Any] = field(default_factory=dict)  # neuron_group, depth_share
    calib_samples: int | None = None  # None: the prune default

    def describe(self) -> dict[str, Any]:
        """For tune.json and for telling whether a resumed tune searches the same space."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_description(cls, data: dict[str, Any]) -> Space:
        """The space `describe` wrote (`--pick` rebuilds it from the tune's settings, not from the TOML)."""
        return cls(**_tuples(data))

    def fingerprint(self) -> str:
        """Changes whenever the measurements of a candidate could (not the name)."""
        data = {k: v for k, v in self.describe().items() if k != "name"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def size(self) -> int:
        """How many candidates the space holds."""
        return sum(1 for _ in self.candidates())

    def candidates(self):
        """Every candidate, in a fixed order."""
        for method in self.methods:
            for pattern in self.patterns if method not in FIXED_BUDGET else (None,):
                ratios = self.ratios if pattern is None else (pattern_ratio(pattern),)
                budgets = self.budgets if method not in FIXED_BUDGET and pattern is None else (None,)
                for ratio in ratios:
                    for budget in budgets:
                        for steps in self.distill_steps:
                            for precision in self.precisions:
                                yield Candidate(method, ratio, precision, budget, pattern, steps)


def pattern_ratio(pattern: str) -> float:
    """The sparsity an N:M pattern fixes: 2:4 -> 0.5."""
    n, m = (int(x) for x in pattern.split(":"))
    return 1 - n / m


SPACES: dict[str, dict[str, Any]] = {
    # every method at three ratios, with and without a short distillation, at every precision of the backend
    "default": dict(methods=METHODS, ratios=(0.25, 0.375, 0.5, 0.75), distill_steps=(0, 100)),
    # the two that matter most: the paper's method and the one that changes shapes; group 256 keeps MoPE quick
    "quick": dict(methods=("multiflow", "mope"), ratios=(0.5, 0.75), mope={"neuron_group": 256},
                  calib_samples=32),
}


def resolve_backend(backend: str) -> tuple[str, tuple[str, ...] | None]:
    """(the backend tune times, the precisions an alias fixes or None).

    Raises:
        UserError: a backend tune cannot drive, in one line.
    """
    if backend in ALIASES:
        name, precision = ALIASES[backend]
        return name, (precision,)
    if backend not in BACKEND_PRECISIONS:
        known = ", ".join([*BACKEND_PRECISIONS, *ALIASES])
        raise UserError(f"--backend {backend}: tune evaluates every candidate through the backend it times and can "
                        f"drive {known}; for TensorRT, build the pick with `mfdeploy build` and time it with "
                        "`mfdeploy bench --backends trt`")
    return backend, None


def load_space(spec: str, backend: str) -> Space:
    """The space named `spec` (default | quick) or read from a TOML file, fitted to `backend`.

    Raises:
        UserError: an unknown name, an unreadable or invalid file, or a choice the backend cannot run.
    """
    name, fixed = resolve_backend(backend)
    allowed = BACKEND_PRECISIONS[name]
    values: dict[str, Any]
    if spec in SPACES:
        values = dict(SPACES[spec])
        values.setdefault("precisions", fixed or allowed)
        return _checked(Space(name=spec, **_tuples(values)), name, fixed, backend)
    path = Path(spec).expanduser()
    if not path.suffix == ".toml" and not path.exists():
        raise UserError(f"--space {spec}: expected default, quick or a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--space {spec}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--space {spec}: cannot read it ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--space {spec}: not valid TOML ({e})") from None
    known = {*LISTS, "mope", "calibration"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"--space {spec}: unknown key {unknown[0]!r} (expected: {', '.join(sorted(known))})")
    for key in sorted(set(data) & set(LISTS)):
        if not isinstance(data[key], list):
            raise UserError(f"--space {spec}: {key} must be a list ({key} = [{data[key]!r}])")
    for key in ("mope", "calibration"):
        if key in data and not isinstance(data[key], dict):
            raise UserError(f"--space {spec}: {key} must be a table ([{key}] on a line of its own, then its options)")
    base = dict(SPACES["default"])
    values = {**base, **{k: v for k, v in data.items() if k not in ("mope", "calibration")}}
    values["mope"] = dict(data.get("mope", {}))
    if "calibration" in data:
        unknown = sorted(set(data["calibration"]) - {"samples"})
        if unknown:
            raise UserError(f"--space {spec}: [calibration] {unknown[0]!r} is not an option (samples)")
        values["calib_samples"] = data["calibration"].get("samples")
    values.setdefault("precisions", fixed or allowed)
    values["budgets"] = [None if b in ("default", None) else b for b in values.get("budgets", [None])]
    values["patterns"] = [None if p in ("none", None) else p for p in values.get("patterns", [None])]
    return _checked(Space(name=str(path), **_tuples(values)), name, fixed, backend)


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()}


def _once(values: tuple) -> tuple:
    """`values` with each repeat dropped (same type and value; unhashable entries, such as a TOML table in a
    list, stay for the checks to name)."""
    out: list = []
    for v in values:
        if not any(type(v) is type(o) and v == o for o in out):
            out.append(v)
    return tuple(out)


def _checked(space: Space, backend: str, fixed: tuple[str, ...] | None, asked: str) -> Space:
    """`space`, each list without repeats, or one line saying what in it cannot be searched on `backend`."""
    from mfdeploy.pruning.budgets import BUDGETS

    where = f"--space {space.name}"
    for key in LISTS:
        if not getattr(space, key):
            raise UserError(f"{where}: {key} is empty")
    unique: dict[str, Any] = {key: _once(getattr(space, key)) for key in LISTS}
    space = replace(space, **unique)
    bad = [m for m in space.methods if m not in METHODS]
    if bad:
        raise UserError(f"{where}: unknown method {bad[0]!r} (tune searches {', '.join(METHODS)})")
    for r in space.ratios:
        if not is_number(r) or not 0 < r < 1:
            raise UserError(f"{where}: ratio {r!r} must be between 0 and 1")
    bad = [b for b in space.budgets if b is not None and b not in BUDGETS]
    if bad:
        raise UserError(f"{where}: unknown budget {bad[0]!r} (expected default or one of {', '.join(BUDGETS)})")
    for p in space.patterns:
        if p is None:
            continue
        if p != "2:4":
            raise UserError(f"{where}: pattern {p!r}: tune searches none or 2:4")
        if backend not in SPARSE_BACKENDS:
            raise UserError(f"{where}: pattern 2:4 only pays where the backend runs sparse kernels, and {backend} "
                            "does not: drop it (an N:M mask on a dense backend is an unstructured mask)")
    for p in space.precisions:
        if p == "fp8":
            raise UserError(f"{where}: fp8: {backend} has no fp8 kernels (TensorRT on Hopper and later does; tune "
                            "does not drive it yet)")
        if fixed and p not in fixed:
            raise UserError(f"{where}: --backend {asked} takes {', '.join(fixed)} candidates only: drop {p} from "
                            f"precisions, or use --backend {backend}")
        if p not in BACKEND_PRECISIONS[backend]:
            runs = ", ".join(BACKEND_PRECISIONS[backend])
            raise UserError(f"{where}: precision {p!r} is not one {backend} runs here (it runs {runs})")
    for s in space.distill_steps:
        if not is_whole(s) or s < 0:
            raise UserError(f"{where}: distill_steps {s!r} must be whole numbers, 0 for none")
    unknown = sorted(set(space.mope) - {"neuron_group", "depth_share"})
    if unknown:
        raise UserError(f"{where}: [mope] {unknown[0]!r} is not an option (neuron_group, depth_share)")
    group, share = space.mope.get("neuron_group", 1), space.mope.get("depth_share", 0.0)
    if not is_whole(group) or group <= 0:
        raise UserError(f"{where}: [mope] neuron_group {group!r} must be a positive whole number")
    if not is_number(share) or not 0 <= share <= 1:
        raise UserError(f"{where}: [mope] depth_share {share!r} must be between 0 (width only) and 1 (layers only)")
    if space.calib_samples is not None and (not is_whole(space.calib_samples) or space.calib_samples <= 0):
        raise UserError(f"{where}: [calibration] samples must be a positive whole number")
    if space.calib_samples == 1 and "mope" in space.methods:  # every MoPE candidate would fail at its prune
        raise UserError(f"{where}: [calibration] samples 1: MoPE needs at least 2 pairs (a batch of one pair has no "
                        "other pair to contrast with): raise it, or drop mope from methods")
    keys = [c.key for c in space.candidates()]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise UserError(f"{where}: two entries of a list name the same candidate ({twice[0]}): keep one")
    return space


__all__ = ["ALIASES", "BACKEND_PRECISIONS", "SPACES", "Candidate", "Space", "load_space", "resolve_backend"]
