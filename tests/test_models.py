import json

import pytest
import torch
from transformers import CLIPModel

from mfdeploy.errors import UserError
from mfdeploy.models import load


def test_towers_equal_model_features(tiny_clip_dir, tiny_adapter):
    ref = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    pixels = torch.randn(3, 3, 32, 32)
    ids, mask = tiny_adapter.tokenize(["a red circle.", "a photo of a small blue square at the top left.", "star"])
    with torch.no_grad():
        img_ref = torch.nn.functional.normalize(ref.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        txt_ref = torch.nn.functional.normalize(
            ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
        img = tiny_adapter.vision_tower()(pixels)
        txt = tiny_adapter.text_tower()(ids, mask)
    assert mask.sum(1).tolist() != [mask.shape[1]] * 3  # padding present
    torch.testing.assert_close(img, img_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(txt, txt_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))


def test_prunable_layers_and_globs(tiny_adapter):
    layers = tiny_adapter.prunable_layers()
    assert len(layers) == 2 * 2 * 6  # 2 towers x 2 layers x 6 linears
    assert {v.modality for v in layers.values()} == {"vision", "text"}
    assert not any("projection" in n or "embeddings" in n or "norm" in n for n in layers)
    only_mlp = tiny_adapter.prunable_layers(include=["*.mlp.*"])
    assert len(only_mlp) == 8 and all(v.role in ("fc1", "fc2") for v in only_mlp.values())
    no_text = tiny_adapter.prunable_layers(exclude=["text_model.*"])
    assert len(no_text) == 12 and all(v.modality == "vision" for v in no_text.values())


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(UserError, match="not a model checkpoint"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="model_type='bert'"):
        load(tmp_path)
