"""Load a checkpoint's tokenizer and image processor, naming the missing file when there is none.

A checkpoint saved with only `model.save_pretrained` has neither. transformers
then either fails with a message whose useful part is on a later line, or
(for the tokenizer of a `clip` config) silently builds an empty tokenizer
that maps every word to one id. For a local directory the files are checked
first, so the user is told which one is missing and how to supply it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mfdeploy.errors import UserError

# Each file set is a complete tokenizer: the fast serialisation, CLIP's slow BPE vocabulary, or a SentencePiece
# model (SigLIP's spiece.model, the Gemma tokenizer.model of SigLIP 2).
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("spiece.model",), ("tokenizer.model",))
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
COPY_HINT = ("copy them from the model it was pruned or fine-tuned from into {dir} "
             "(e.g. `cp DENSE/tokenizer*.json DENSE/preprocessor_config.json {dir}/`, or call "
             "save_pretrained({dir}) on its tokenizer and image processor)")


def one_line(e: BaseException, limit: int = 400) -> str:
    """An exception's whole message on one line (whitespace collapsed), cut at `limit` characters.

    Unlike `errors.first_line`, it keeps the cause when a library spreads its
    message over several lines.
    """
    text = " ".join(str(e).split())
    if not text:
        return type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quiet_transformers() -> None:
    """transformers' warnings and progress bars off (mfdeploy says what matters in its own lines). Its config
    repr, built for an info line even when that line is not shown, builds a default sub-config whose token ids
    are out of its own vocabulary (SigLIP's): two warnings on every SigLIP load otherwise."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def save_tokenizer(tokenizer: Any, out: Path) -> None:
    """`tokenizer.save_pretrained(out)`, loadable by transformers 4 too: transformers 5 names a tokenizer built from
    a bare tokenizer.json `TokenizersBackend` in tokenizer_config.json, a class transformers 4 does not have (its
    AutoTokenizer then fails); `PreTrainedTokenizerFast`, the same tokenizer in both, loads in each."""
    import json

    tokenizer.save_pretrained(out)
    config = Path(out) / "tokenizer_config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        if data.get("tokenizer_class") == "TokenizersBackend":
            data["tokenizer_class"] = "PreTrainedTokenizerFast"
            config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_tokenizer(where: Path | str) -> Any:
    """The tokenizer of a checkpoint directory or hub id.

    Raises:
        UserError: no tokenizer files in a local directory (named, with how to add them), or
            a tokenizer transformers cannot read.
    """
    from transformers import AutoTokenizer

    present = not isinstance(where, Path) or any(all((where / f).is_file() for f in group)
                                                 for group in TOKENIZER_FILES)
    return _load(where, "tokenizer", present, "no tokenizer.json (nor vocab.json + merges.txt, spiece.model or "
                 "tokenizer.model): this checkpoint has no tokenizer", AutoTokenizer.from_pretrained)


def load_image_processor(where: Path | str) -> Any:
    """The image processor of a checkpoint directory or hub id.

    Raises:
        UserError: no preprocessor_config.json in a local directory (named, with how to add it),
            or an image processor transformers cannot read.
    """
    from transformers import AutoImageProcessor

    present = not isinstance(where, Path) or any((where / f).is_file() for f in PROCESSOR_FILES)
    return _load(where, "image processor", present, "no preprocessor_config.json: this checkpoint has no image "
                 "processor", AutoImageProcessor.from_pretrained)


def _load(where: Path | str, what: str, present: bool, missing: str, loader: Callable[..., Any]) -> Any:
    if not present:
        raise UserError(f"{where}: {missing}; {COPY_HINT.format(dir=where)}")
    from mfdeploy.models import hub

    quiet_transformers()
    try:
        return loader(where, **hub.load_kwargs(where))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise hub.not_cached(where, what) or UserError(f"{where}: cannot load the {what}: {one_line(e)}") from None


def resized_pixels(image_processor: Any, width: int, height: int) -> int:
    """Pixels of the picture `image_processor` resizes a `width` x `height` image to, before any crop.

    A "shortest edge" resize (CLIP's) scales the shorter side to its size, so a long thin image grows: 30000 x 1
    becomes 224 x 6,720,000 pixels (gigabytes of arrays) before the centre crop. A fixed-size resize (SigLIP's)
    gives its size; anything else is taken as the image's own pixels.
    """
    size = getattr(image_processor, "size", None)

    def field(name: str) -> int | None:  # a dict in older transformers, a SizeDict (attributes) in newer ones
        value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    if not getattr(image_processor, "do_resize", True) or size is None:
        return width * height
    edge, h, w = field("shortest_edge"), field("height"), field("width")
    if edge is not None:
        short, long = sorted((max(width, 1), max(height, 1)))
        return edge * max(edge, int(edge * long / short))
    if h is not None and w is not None:
        return h * w
    return width * height


def grown_too_large(width: int, height: int, grown: int, limit: int) -> str:
    """The refusal of an image whose resized picture (`resized_pixels`) is over `limit` pixels; each caller adds
    its own place, option and advice."""
    return (f"the image is {width}x{height}; the model's image processor would resize it to {grown:,} pixels "
            f"before cropping, over the limit of {limit:,}")


def token_counts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """How many tokens each text is before any truncation, special tokens included.

    This is what the model's text length is compared with, to find the texts that tokenizing would cut.
    """
    if not texts:
        return []
    # verbose=False: transformers would log its own warning (once, raw) for a text over the model's length
    enc = tokenizer(list(texts), truncation=False, padding=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]
