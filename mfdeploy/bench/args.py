"""The bench's arguments: comma-separated lists parsed and every value checked, each failure in one line."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mfdeploy.errors import UserError
from mfdeploy.runtime.registry import TOWERS


def parse_list(text: str, what: str, known: Sequence[str] | None = None) -> list[str]:
    """`"a,b"` -> `["a", "b"]`, checked against `known`.

    Raises:
        UserError: empty list or an unknown item.
    """
    parts = [t.strip() for t in str(text).split(",")]
    items = list(dict.fromkeys(t for t in parts if t))  # one of each, in the order given
    if not items:
        raise UserError(f"--{what}: empty list")
    if "" in parts:
        raise UserError(f"--{what} {text}: an empty item between commas")
    if known is not None:
        unknown = [t for t in items if t not in known]
        if unknown:
            int8 = [t for t in unknown if t.endswith("-int8") and t.replace("-int8", "") in {k.replace("-cpu", "")
                                                                                             for k in known}]
            hint = (f" ({', '.join(int8)}: time the build's INT8 towers with --int8 beside the float backend)"
                    if what == "backends" and int8 else "")
            raise UserError(f"--{what}: unknown {', '.join(map(repr, unknown))}; known: {', '.join(known)}{hint}")
    return list(dict.fromkeys(items))


def parse_batch_sizes(text: str) -> list[int]:
    """`"1,8,32"` -> `[1, 8, 32]`.

    Raises:
        UserError: not a comma-separated list of positive integers.
    """
    sizes = []
    for item in parse_list(text, "batch-sizes"):
        try:
            value = int(item)
        except ValueError:
            raise UserError(f"--batch-sizes: {item!r} is not an integer (expected e.g. 1,8,32)") from None
        if value <= 0:
            raise UserError(f"--batch-sizes: batch size must be positive, got {value}")
        sizes.append(value)
    return sizes


def check_args(towers, batch_sizes, text_len, max_text_len, warmup, iters, threads, min_time) -> None:
    """Refuse bad `run_bench` arguments in one line each, before anything is loaded or timed."""
    unknown = [t for t in towers if t not in TOWERS]
    if unknown or not towers:
        what = ", ".join(map(repr, unknown)) or "empty list"
        raise UserError(f"--towers: unknown {what}; known: {', '.join(TOWERS)}")
    if not batch_sizes or any(int(b) <= 0 for b in batch_sizes):
        raise UserError(f"--batch-sizes: batch sizes must be positive integers, got {list(batch_sizes)}")
    if text_len is not None and (text_len < 1 or (max_text_len is not None and text_len > max_text_len)):
        limit = f"the model's maximum {max_text_len}" if max_text_len is not None else "the model's maximum"
        raise UserError(f"--text-len: must be between 1 and {limit}, got {text_len}")
    if warmup < 0:
        raise UserError(f"--warmup: must be >= 0, got {warmup}")
    if iters < 1:
        raise UserError(f"--iters: must be >= 1, got {iters}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads: must be >= 1, got {threads}")
    if not 0 <= min_time < math.inf:  # nan compares false: it would time nothing; inf would never end
        raise UserError(f"--min-time: must be a finite number >= 0, got {min_time}")


def check_input_memory(batch_sizes: Sequence[int], towers: Sequence[str], image_size: int, text_len: int,
                       available: int | None) -> None:
    """Refuse batch sizes whose inputs alone would take over an eighth of the `available` memory (bytes; None:
    unknown, no check), before they are made: the runtime's activations take several times the inputs, and the
    allocation would fail in a traceback, or the OOM killer end the run."""
    if available is None:
        return
    batch = max(batch_sizes)
    need = (batch * 3 * image_size * image_size * 4 if "vision" in towers else 0) \
        + (batch * text_len * 8 * 2 if "text" in towers else 0)  # float32 pixels; int64 ids and mask
    if need > available / 8:
        raise UserError(f"--batch-sizes {batch}: its inputs alone take {need / 2**30:.1f} GiB, over an eighth of the "
                        f"{available / 2**30:.1f} GiB of memory available here (the runtime's activations take "
                        "several times that); time smaller batches")


# Live float32 tensors per token a tower's runtime holds at its peak, in units of (4 x hidden + intermediate):
# measured 1 GB for the bundled model's text tower at batch 4096 (ONNX Runtime, pruned and dense sessions),
# where this estimate says 2.7 GB. Conservative on purpose: the check is there to stop the OOM killer.
LIVE_TENSORS = 8


def tower_shapes(model_config: object, image_size: int, text_len: int) -> dict[str, tuple[int, int, int, int]]:
    """{tower: (tokens, hidden, intermediate, heads)} read from a Hugging Face dual-encoder config (CLIP and
    SigLIP name them alike); a tower whose config lacks them is left out (no estimate, no check)."""
    shapes = {}
    for tower, name in (("vision", "vision_config"), ("text", "text_config")):
        cfg = getattr(model_config, name, None)
        found = [getattr(cfg, k, None) for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                 "patch_size" if tower == "vision" else "hidden_size")]
        sizes = [v for v in found if isinstance(v, int) and v > 0]
        if len(sizes) < 4:
            continue
        hidden, inner, heads, patch = sizes
        tokens = (image_size // patch) ** 2 + 1 if tower == "vision" else text_len
        shapes[tower] = (tokens, hidden, inner, heads)
    return shapes


def check_activation_memory(batch_sizes: Sequence[int], towers: Sequence[str],
                            shapes: dict[str, tuple[int, int, int, int]], available: int | None) -> None:
    """Refuse a batch size whose activations would take over half the `available` memory (bytes; None: no
    check), estimated from the tower's shape (`LIVE_TENSORS`, and the attention scores): the run would be killed
    for memory, without a word, part-way through the timing."""
    if available is None:
        return
    batch = max(batch_sizes)
    for tower in towers:
        if tower not in shapes:
            continue
        tokens, hidden, inner, heads = shapes[tower]
        need = batch * 4 * (LIVE_TENSORS * tokens * (4 * hidden + inner) + 3 * heads * tokens * tokens)
        if need > available / 2:
            raise UserError(f"--batch-sizes {batch}: the {tower} tower's activations at this batch would take about "
                            f"{need / 2**30:.1f} GiB (estimated), over half of the {available / 2**30:.1f} GiB of "
                            "memory available here; time smaller batches")
