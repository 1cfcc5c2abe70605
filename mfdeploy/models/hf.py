"""What every Hugging Face dual-encoder adapter shares: processors loaded on first use, the model id, saving, and
the encoder layers' linears as the prunable layers.

A family adapter (`clip.py`, `siglip.py`) subclasses `HFAdapter` and names its
`family`, its embedding width and, if they differ from CLIP's, its tower
attributes and prunable roles.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from mfdeploy.errors import UserError
from mfdeploy.models.base import Adapter, PrunableLayer
from mfdeploy.models.processors import save_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# The linears of every encoder layer, CLIP's and SigLIP's alike (`layer.self_attn.q_proj`, ... `layer.mlp.fc2`).
ENCODER_ROLES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                 "mlp.fc1", "mlp.fc2")
TOWER_ATTRS = {"vision": "vision_model", "text": "text_model"}


class HFAdapter(Adapter):
    """An adapter over a transformers dual-encoder model with `vision_model` and `text_model` encoders."""

    roles: ClassVar[tuple[str, ...]] = ENCODER_ROLES  # prunable linears of an encoder layer, by submodule path
    tower_attrs: ClassVar[dict[str, str]] = TOWER_ATTRS  # modality -> the model's tower attribute
    model: PreTrainedModel  # the transformers model of the family (`family.model_class`)

    def __init__(self, model: PreTrainedModel, tokenizer: Any, image_processor: Any, source: str,
                 origin: dict[str, Any] | None = None, loaders: dict[str, Callable[[], Any]] | None = None):
        """Wrap a loaded model.

        Args:
            model: the transformers model of the adapter's family.
            tokenizer: its tokenizer, or None to load it on first use through `loaders`.
            image_processor: its image processor, or None to load it on first use through `loaders`.
            source: the hub id or directory it came from.
            origin: what a pruned checkpoint was made from (`mfdeploy_origin.json`); None when dense.
            loaders: `{"tokenizer": fn, "image_processor": fn}`, called once when first needed.
        """
        self.model = model.eval()
        self._processors = {"tokenizer": tokenizer, "image_processor": image_processor}
        self._loaders = dict(loaders or {})
        self.source = source
        if origin is not None:  # else a module pruned in memory keeps its own (`Adapter.origin`)
            self.origin = origin

    @classmethod
    def check_config(cls, config: dict[str, Any], where: object) -> None:
        """Refuse, in one line, a config of the family that the adapter cannot serve (default: accept all).

        Raises:
            UserError: the reason.
        """

    def _processor(self, name: str) -> Any:
        if self._processors[name] is None and name in self._loaders:
            self._processors[name] = self._loaders.pop(name)()
        if self._processors[name] is None:  # a model handed in without it (the Python API): say so, not a TypeError
            raise UserError(f"{self.source}: this step needs the model's {name.replace('_', ' ')}: pass the model's "
                            "tokenizer= and processor= (or an adapter from mfdeploy.load)")
        return self._processors[name]

    @property
    def tokenizer(self) -> Any:
        return self._processor("tokenizer")

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self._processors["tokenizer"] = value

    @property
    def image_processor(self) -> Any:
        return self._processor("image_processor")

    @image_processor.setter
    def image_processor(self, value: Any) -> None:
        self._processors["image_processor"] = value

    @property
    def model_id(self) -> str:
        name = getattr(self.model.config, "_name_or_path", "") or self.source
        return str(name)

    def vision_tower(self) -> nn.Module:
        return self.family.vision_tower(self.model).eval()

    def text_tower(self) -> nn.Module:
        return self.family.text_tower(self.model).eval()

    def _all_prunable(self) -> dict[str, PrunableLayer]:
        out: dict[str, PrunableLayer] = {}
        for modality, attr in self.tower_attrs.items():
            tower = getattr(self.model, attr)
            for i, layer in enumerate(tower.encoder.layers):
                block = f"{attr}.encoder.layers.{i}"
                for role in self.roles:
                    module = layer.get_submodule(role)
                    assert isinstance(module, nn.Linear)
                    out[f"{block}.{role}"] = PrunableLayer(module, modality, block, role.split(".")[-1])
        return out

    def tower_module(self, modality: str) -> nn.Module:
        """The model's whole tower of `modality` (encoder, embeddings and head), e.g. for parameter counts."""
        return getattr(self.model, self.tower_attrs[modality])

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def max_text_len(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.text_config.vocab_size)

    def save(self, out: Path) -> None:
        out = Path(out)
        # save_pretrained records the model's dtype at the top of config.json only: the towers' configs keep the
        # one they were loaded in (a float16 checkpoint pruned in float32 said float16), and transformers builds
        # each tower in its own config's dtype
        for attr in ("vision_config", "text_config"):
            sub = getattr(self.model.config, attr, None)
            if sub is not None and getattr(sub, "dtype", None) is not None:
                sub.dtype = self.model.dtype
        self.model.save_pretrained(out)
        save_tokenizer(self.tokenizer, out)  # loadable by transformers 4 and 5
        self.image_processor.save_pretrained(out)


__all__ = ["ENCODER_ROLES", "TOWER_ATTRS", "HFAdapter"]
