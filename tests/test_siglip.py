"""SigLIP and SigLIP 2 (issue 26): the family lives in its adapter; towers, scores and losses are transformers' own.

Tiny random `SiglipModel`s (conftest: `tiny_siglip_dir` with the shapes world's word-level tokenizer,
`tiny_siglip2_dir` with a Gemma-style `Siglip2Tokenizer` that pads on the left) are checked against the model's
own `get_image_features` / `get_text_features` and its own sigmoid loss; the NaFlex variant is refused by name.
The commands themselves run in `test_siglip_commands.py`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CAPTIONS, run_cli
from siglip_models import LOGIT_BIAS, LOGIT_SCALE, save_tiny_naflex
from transformers import AutoTokenizer, CLIPModel, SiglipModel

from mfdeploy.data import world
from mfdeploy.errors import UserError
from mfdeploy.models import load
from mfdeploy.models.clip import CLIP, CLIPAdapter
from mfdeploy.models.family import PairScorer
from mfdeploy.models.registry import ADAPTERS, FAMILIES, family_of
from mfdeploy.models.siglip import SIGLIP, SiglipAdapter
from mfdeploy.pruning.distill import _embed, loss_fn

VARIANTS = ["tiny_siglip_dir", "tiny_siglip2_dir"]


def features(model, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None):
    """transformers' own embeddings, L2-normalised (SigLIP: no attention mask, as it was trained)."""
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels).pooler_output
        kwargs = {} if mask is None else {"attention_mask": mask}
        txt = model.get_text_features(input_ids=ids, **kwargs).pooler_output
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def test_the_adapter_is_picked_by_model_type(tiny_siglip_dir, tiny_siglip2_dir, tiny_clip_dir):
    assert ADAPTERS == {"clip": CLIPAdapter, "siglip": SiglipAdapter}
    assert set(FAMILIES) == {"clip", "siglip"}
    for path, cls, family in ((tiny_siglip_dir, SiglipAdapter, SIGLIP), (tiny_siglip2_dir, SiglipAdapter, SIGLIP),
                              (tiny_clip_dir, CLIPAdapter, CLIP)):
        adapter = load(path)
        assert type(adapter) is cls and adapter.family is family and family_of(path) is family
    assert isinstance(load(tiny_siglip_dir).model, SiglipModel)


def test_naflex_is_refused_in_one_line(tmp_path, capsys):
    naflex = save_tiny_naflex(tmp_path / "naflex")
    with pytest.raises(UserError, match="SigLIP 2 NaFlex"):
        load(naflex)
    assert run_cli(["info", str(naflex)]) == 2
    err = capsys.readouterr().err.strip()
    assert "SigLIP 2 NaFlex" in err and "siglip2" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_siglip_without_its_pooling_head_is_refused(tiny_siglip_dir, tmp_path):
    import json
    import shutil

    shutil.copytree(tiny_siglip_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["vision_config"]["vision_use_head"] = False
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="vision_use_head"):
        load(tmp_path / "m")


@pytest.mark.parametrize("variant", VARIANTS)
def test_towers_are_the_models_own_features(variant, request):
    path = request.getfixturevalue(variant)
    adapter = load(path)
    ids, mask = adapter.tokenize(CAPTIONS)
    tok = AutoTokenizer.from_pretrained(path)
    want = tok(CAPTIONS, padding="max_length", max_length=adapter.max_text_len, truncation=True,
               return_tensors="pt")["input_ids"]
    assert torch.equal(ids, want) and ids.shape == (3, adapter.max_text_len)  # padded as the model was trained
    assert bool(mask.all())  # every position attended: padding included
    assert adapter.fixed_text_len == adapter.max_text_len == 32
    if variant == "tiny_siglip2_dir":
        assert tok.padding_side == "left" and bool((ids[:, 0] == tok.pad_token_id).all())  # the tokenizer's own side
    pixels = adapter.pixel_values([world.make_scene(s).render() for s in (1, 2, 3)])
    ref_img, ref_txt = features(SiglipModel.from_pretrained(path).eval(), pixels, ids)
    with torch.no_grad():
        img, txt = adapter.vision_tower()(pixels), adapter.text_tower()(ids, mask)
        txt_no_mask = adapter.text_tower()(ids)
    torch.testing.assert_close(img, ref_img, atol=1e-6, rtol=0)
    torch.testing.assert_close(txt, ref_txt, atol=1e-6, rtol=0)
    torch.testing.assert_close(txt_no_mask, txt, atol=0, rtol=0)  # the mask is ignored, not used


def test_prunable_layers_leave_the_heads_dense(tiny_siglip_dir):
    adapter = load(tiny_siglip_dir)
    layers = adapter.prunable_layers()
    assert len(layers) == 2 * 2 * 6  # 2 towers x 2 encoder layers x (q, k, v, out, fc1, fc2)
    assert not any(".head." in n or "embeddings" in n for n in layers)
    assert {v.role for v in layers.values()} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert {v.modality for v in layers.values()} == {"vision", "text"}
    assert SIGLIP.head == ("vision_model.head", "text_model.head")


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_pair_loss_and_logits_are_the_models_own(family, tiny_siglip_dir, tiny_clip_dir):
    """One loss function per family, equal to transformers' `return_loss=True` loss and logits."""
    path, cls = (tiny_siglip_dir, SiglipModel) if family == "siglip" else (tiny_clip_dir, CLIPModel)
    adapter = load(path)
    model = cls.from_pretrained(path).eval()
    captions = [world.make_scene(s).caption() for s in range(4)]
    pixels = adapter.pixel_values([world.make_scene(s).render() for s in range(4)])
    ids, mask = adapter.tokenize(captions)
    with torch.no_grad():
        kwargs = {"attention_mask": mask} if family == "clip" else {}  # SigLIP is called as it was trained
        out = model(input_ids=ids, pixel_values=pixels, return_loss=True, **kwargs)
        img, txt = adapter.vision_tower()(pixels), adapter.text_tower()(ids, mask)
        logits = adapter.pair_logits(img, txt)
        torch.testing.assert_close(logits, out.logits_per_image, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(adapter.pair_loss(img, txt), out.loss, atol=1e-5, rtol=1e-5)
        probs = adapter.probabilities(logits)
    if family == "siglip":
        assert float(adapter.model.logit_bias.detach()) == pytest.approx(LOGIT_BIAS)
        want = torch.sigmoid(np.exp(LOGIT_SCALE) * (img @ txt.T) + LOGIT_BIAS)
        torch.testing.assert_close(probs, want, atol=1e-6, rtol=1e-5)  # independent sigmoids, with the bias
    else:
        torch.testing.assert_close(probs.sum(1), torch.ones(4))  # one distribution over the texts


@pytest.mark.parametrize("variant", ["tiny_siglip_dir", "tiny_clip_dir"])
def test_distillation_term_is_the_familys_divergence(variant, request):
    """`loss(student, teacher) - loss(teacher, teacher)`: 0 at the teacher, positive elsewhere; for SigLIP the
    binary KL of every pair's sigmoid."""
    from mfdeploy.models.inputs import CalibSource, pair_batches

    adapter = load(request.getfixturevalue(variant))
    teacher = copy.deepcopy(adapter.model).eval()
    (batch,) = pair_batches(adapter, CalibSource("shapes"), 6, 6)
    pairs = PairScorer.of(adapter.family, teacher)
    with torch.no_grad():
        t = _embed(teacher, batch)
        assert float(loss_fn(t, t, pairs)) == pytest.approx(0.0, abs=1e-5)
        adapter.model.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(0.3)
        s = _embed(adapter.model, batch)
        kl = float(loss_fn(s, t, pairs)) - float(F.mse_loss(s[0], t[0]) + F.mse_loss(s[1], t[1]))
    assert kl > 0
    if variant == "tiny_siglip_dir":
        p, q = pairs.probabilities(*t).double(), pairs.probabilities(*s).double()
        binary_kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(1).mean()
        assert kl == pytest.approx(float(binary_kl), rel=1e-3)


def test_eval_inputs_are_cached_per_family_convention(tiny_clip_dir, tmp_path):
    """A SigLIP checkpoint with the very tokenizer of a CLIP one still gets its own (fixed-length) text inputs."""
    from siglip_models import save_tiny_siglip

    from mfdeploy.eval.prepare import processor_fingerprint

    clip, siglip = load(tiny_clip_dir), load(save_tiny_siglip(tmp_path / "s", max_text_len=48))
    assert clip.tokenizer.backend_tokenizer.to_str() == siglip.tokenizer.backend_tokenizer.to_str()
    assert processor_fingerprint(clip)[1] != processor_fingerprint(siglip)[1]
