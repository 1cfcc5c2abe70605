"""The ViT-B/32 architecture (`CLIPConfig()` defaults, random weights), a SigLIP-base-sized model, random calibration.

Shared by the benchmark scripts: no hub access is needed, and the numbers
measure the toolkit's cost on a real-sized model, not its quality.
"""

from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from mfdeploy.models.inputs import Batch


def vitb32(seed: int = 0, smoke: bool = False) -> CLIPModel:
    """CLIP ViT-B/32 with random weights (151M parameters).

    `smoke`: a 2-layer, width-64 model of the same layout with 64x64 images,
    to check a benchmark script in seconds.
    """
    config = CLIPConfig()
    if smoke:
        small = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
        config = CLIPConfig(text_config=small, vision_config=dict(small, image_size=64), projection_dim=32)
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def siglip_b16(seed: int = 0, smoke: bool = False) -> SiglipModel:
    """SigLIP base patch16-224's layout (203M parameters: towers of width 768, 12 layers; 64-token text, 32000
    words) with random weights; `smoke`: 2 layers of width 64 on 64x64 images."""
    width, layers, heads, mlp, image, patch = (64, 2, 2, 256, 64, 16) if smoke else (768, 12, 12, 3072, 224, 16)
    text = dict(vocab_size=32000, hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=64, pad_token_id=1, eos_token_id=1,
                bos_token_id=2)  # as google/siglip-base-patch16-224
    vision = dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                  image_size=image, patch_size=patch)
    torch.manual_seed(seed)
    return SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()


def random_batches(model: CLIPModel | SiglipModel, n: int, batch_size: int, text_len: int = 20,
                   seed: int = 0) -> list[Batch]:
    """`n` random image-caption pairs: pixels ~ N(0,1), ids ending in the EOT token, some padding.

    SigLIP takes text of its one length and no attention mask: random ids of that length, the mask all ones.
    """
    g = torch.Generator().manual_seed(seed)
    vc, tc = model.config.vision_config, model.config.text_config
    if isinstance(model, SiglipModel):
        length = tc.max_position_embeddings
        return [Batch(torch.randn(min(batch_size, n - s), 3, vc.image_size, vc.image_size, generator=g),
                      torch.randint(2, tc.vocab_size, (min(batch_size, n - s), length), generator=g),
                      torch.ones(min(batch_size, n - s), length, dtype=torch.long))
                for s in range(0, n, batch_size)]
    eot = tc.eos_token_id if tc.eos_token_id != 2 else tc.vocab_size - 1  # legacy configs pool at the max id
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        pixels = torch.randn(b, 3, vc.image_size, vc.image_size, generator=g)
        lengths = torch.randint(5, text_len + 1, (b,), generator=g)
        ids = torch.randint(1, tc.vocab_size - 2, (b, text_len), generator=g)
        mask = torch.zeros(b, text_len, dtype=torch.long)
        for i, n_tok in enumerate(lengths.tolist()):
            ids[i, n_tok - 1] = eot
            ids[i, n_tok:] = 0
            mask[i, :n_tok] = 1
        out.append(Batch(pixels, ids, mask))
    return out


class WrappedAdapter:
    """Make a bare CLIPModel (or SiglipModel) look like a loaded mfdeploy adapter.

    The OpenAI BPE tokenizer needs a download; the exporter only needs some
    tokenizer to trace the text tower, so the shapes world's word-level one
    stands in (its ids are valid ids of the 49408-token vocabulary).
    """

    def __new__(cls, model: CLIPModel | SiglipModel):
        from transformers import CLIPImageProcessor

        from mfdeploy.data import world
        from mfdeploy.models.clip import CLIPAdapter
        from mfdeploy.zoo.tokenizer import build_tokenizer

        size = model.config.vision_config.image_size
        tokenizer = build_tokenizer(world.vocabulary(), model.config.text_config.max_position_embeddings)
        if isinstance(model, SiglipModel):
            from transformers import SiglipImageProcessor

            from mfdeploy.models.siglip import SiglipAdapter

            processor = SiglipImageProcessor(size={"height": size, "width": size})
            return SiglipAdapter(model, tokenizer, processor, source="SiglipConfig random SigLIP-base/16")
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return CLIPAdapter(model, tokenizer, processor, source="CLIPConfig() random ViT-B/32")
