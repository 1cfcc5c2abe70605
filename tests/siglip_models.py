"""Tiny randomly initialised SigLIP, SigLIP 2 (fixed resolution) and SigLIP 2 NaFlex checkpoints, built from their
transformers configs and saved with save_pretrained (weights, tokenizer, image processor), as the hub ships them.

- "siglip": `SiglipModel` with the shapes world's word-level tokenizer (BOS ... EOS, padded on the right), the
  layout of the bundled SigLIP the lead trains.
- "siglip2": `SiglipModel` with a `Siglip2Tokenizer` (Gemma-style BPE, lowercasing, padding on the left, no EOS),
  which is what a fixed-resolution SigLIP 2 checkpoint (google/siglip2-base-patch16-224) is.
- NaFlex: `Siglip2Model` (model_type "siglip2"), which mfdeploy refuses.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

from mfdeploy.data import world
from mfdeploy.zoo.tokenizer import build_tokenizer

LOGIT_SCALE, LOGIT_BIAS = math.log(10.0), -2.5  # SigLIP's initial scale; a bias that keeps sigmoids readable


def siglip2_tokenizer():
    """A Gemma-style BPE `Siglip2Tokenizer` whose merges spell every shapes-world word as one token."""
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    words = world.vocabulary()
    vocab = {t: i for i, t in enumerate(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"))}
    for c in sorted({c for w in words for c in w.lower()} | set("▁.,")):
        vocab.setdefault(c, len(vocab))
    merges = []
    for w in words:
        piece = "▁" + w.lower()
        for i in range(2, len(piece) + 1):
            if piece[:i] not in vocab:
                vocab[piece[:i]] = len(vocab)
                merges.append((piece[:i - 1], piece[i - 1]))
    return Siglip2Tokenizer(vocab=vocab, merges=merges)


def save_tiny_siglip(out: Path, variant: str = "siglip", seed: int = 0, width: int = 32, layers: int = 2,
                     heads: int = 2, image_size: int = 32, max_text_len: int = 32) -> Path:
    """A tiny `SiglipModel` (SigLIP, or fixed-resolution SigLIP 2 by its tokenizer), saved as a HF directory."""
    tok = build_tokenizer(world.vocabulary(), max_text_len) if variant == "siglip" else siglip2_tokenizer()
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_text_len,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=8),
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(LOGIT_BIAS)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def save_tiny_naflex(out: Path) -> Path:
    """A tiny SigLIP 2 NaFlex checkpoint (`Siglip2Model`, model_type "siglip2")."""
    from transformers import Siglip2Config, Siglip2Model

    config = Siglip2Config(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_patches=16, patch_size=8),
    )
    out.mkdir(parents=True, exist_ok=True)
    Siglip2Model(config).save_pretrained(out)
    return out
