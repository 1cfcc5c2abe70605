"""What training needs of each model family: architecture, image processor, embeddings, logits and loss.

`mfdeploy.zoo.train` trains either reference model; the family decides how
the model is built, how captions are tokenized (CLIP pads to the batch's
longest caption with an attention mask; SigLIP pads to a fixed length and
uses no mask), how embeddings are read, and the loss (CLIP's symmetric
softmax contrastive loss; SigLIP's pairwise sigmoid loss with a learned bias).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedModel, SiglipConfig, SiglipModel
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from mfdeploy.data import world

MAX_TEXT_LEN = 48
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def make_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int, width: int = 160,
                layers: int = 4) -> CLIPConfig:
    """The reference architecture: two 4-layer towers of width 160; 96x96 images in 32x32 patches.

    One patch per cell of the world's 3x3 grid: every object lies inside one
    patch, so the patch embedding sees a whole shape. With 16x16 patches on
    64x64 images (objects cut across patch borders at random) two 40-minute
    runs learned colour, size and position but left shape near chance.
    """
    text = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                num_attention_heads=4, max_position_embeddings=MAX_TEXT_LEN, pad_token_id=pad_id,
                bos_token_id=bos_id, eos_token_id=eos_id)
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=world.IMAGE_SIZE, patch_size=32, num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)


def make_siglip_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int, width: int = 160,
                       layers: int = 4) -> SiglipConfig:
    """The CLIP reference architecture as a SiglipModel (attention-pooling vision head, last-token text head)."""
    text = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                num_attention_heads=4, max_position_embeddings=MAX_TEXT_LEN, pad_token_id=pad_id,
                bos_token_id=bos_id, eos_token_id=eos_id, projection_size=width)
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=world.IMAGE_SIZE, patch_size=32, num_channels=3)
    return SiglipConfig(text_config=text, vision_config=vision)


def image_processor() -> CLIPImageProcessor:
    size = world.IMAGE_SIZE
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=list(MEAN), image_std=list(STD), do_convert_rgb=True)


def siglip_image_processor() -> SiglipImageProcessorPil:
    """Resize to the model's size (world images already are) and normalise; no center crop, as SigLIP's."""
    size = world.IMAGE_SIZE
    return SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=list(MEAN),
                                   image_std=list(STD), do_convert_rgb=True)


class Family:
    """What training needs of a model family: build, embed, score, and the loss."""

    name = "clip"
    padding: str | bool = True  # pad to the longest caption of the batch, with an attention mask

    def build(self, tok) -> PreTrainedModel:
        return CLIPModel(make_config(len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id))

    def fast_params(self) -> set[str]:
        return {"vision_model.embeddings.position_embedding.weight", "vision_model.embeddings.class_embedding"}

    def encode_text(self, tok, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tok(texts, padding=self.padding, max_length=MAX_TEXT_LEN, truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def image_embeds(self, model, pixels: torch.Tensor) -> torch.Tensor:
        return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)

    def text_embeds(self, model, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.text_projection(model.text_model(**enc).pooler_output)

    def logits(self, model, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """`[B_images, B_texts]` logits of L2-normalised embeddings."""
        return model.logit_scale.exp() * img @ txt.t()

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        target = torch.arange(len(logits))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))

    def after_step(self, model) -> None:
        model.logit_scale.clamp_(0, math.log(100))

    def image_processor(self):
        return image_processor()


class SiglipFamily(Family):
    """SigLIP: pairwise sigmoid loss with a learned bias; fixed-length text, no attention mask."""

    name = "siglip"
    padding = "max_length"

    def build(self, tok) -> PreTrainedModel:
        model = SiglipModel(make_siglip_config(len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id))
        with torch.no_grad():  # the paper's initialisation: t' = log 10, b = -10
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
        return model

    def fast_params(self) -> set[str]:
        return {"vision_model.embeddings.position_embedding.weight"}

    def encode_text(self, tok, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tok(texts, padding=self.padding, max_length=MAX_TEXT_LEN, truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"]}  # SigLIP is trained without an attention mask

    def image_embeds(self, model, pixels: torch.Tensor) -> torch.Tensor:
        return model.vision_model(pixel_values=pixels).pooler_output

    def text_embeds(self, model, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.text_model(**enc).pooler_output

    def logits(self, model, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return model.logit_scale.exp() * img @ txt.t() + model.logit_bias

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        # -log sigmoid(z_ij * logit_ij), z = +1 on the diagonal (matching pairs), -1 elsewhere; mean over images
        signs = 2 * torch.eye(len(logits)) - 1
        return -F.logsigmoid(signs * logits).sum(dim=-1).mean()

    def after_step(self, model) -> None:
        pass

    def image_processor(self):
        return siglip_image_processor()


FAMILIES = {"clip": Family(), "siglip": SiglipFamily()}


__all__ = ["FAMILIES", "MAX_TEXT_LEN", "MEAN", "STD", "Family", "SiglipFamily", "image_processor",
           "make_config", "make_siglip_config", "siglip_image_processor"]
