"""maskfeat.models.load_model: converted official checkpoints reproduce the official outputs; a
run's folder gives the run's own model."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from test_cli import maskfeat
from test_convert import FINETUNE, FIXTURES, PRETRAIN, assert_close_to, needs_fixtures

from maskfeat.builder import build_pretrain_model
from maskfeat.config import Config
from maskfeat.masking import block_mask
from maskfeat.models import MaskFeat, load_model


@needs_fixtures
@pytest.mark.parametrize("name", PRETRAIN + FINETUNE)
@pytest.mark.parametrize("which", ["folder", "file"])
def test_load_model_of_a_converted_official_checkpoint_reproduces_its_outputs(tmp_path, name, which):
    r = maskfeat("convert", str(FIXTURES / f"{name}.pyth"), str(tmp_path))
    assert r.returncode == 0, r.stderr
    path = (
        tmp_path
        if which == "folder"
        else tmp_path / ("maskfeat.safetensors" if name in PRETRAIN else "encoder.safetensors")
    )
    model = load_model(str(path))
    assert not model.training
    io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
    with torch.no_grad():
        if name in PRETRAIN:
            assert isinstance(model, MaskFeat)
            loss, pred, target = model(io["x"], io["mask"])
            assert_close_to(pred[io["mask"]], io["pred_masked"], "pred at the masked tokens")
            assert_close_to(target[io["mask"]], io["target_masked"], "target at the masked tokens")
            assert_close_to(loss, io["loss"], "loss")
        else:
            assert_close_to(model(io["x"]), io["logits"], "logits")


@needs_fixtures
def test_load_model_of_a_converted_pretraining_encoder_gives_pooled_features(tmp_path):
    assert maskfeat("convert", str(FIXTURES / "vit_image_pt.pyth"), str(tmp_path)).returncode == 0
    whole, encoder = load_model(str(tmp_path)), load_model(str(tmp_path / "encoder.safetensors"))
    x = load_file(str(FIXTURES / "vit_image_pt.io.safetensors"))["x"]
    with torch.no_grad():
        features = encoder(x)
        tokens = whole.encoder.forward_features(x)
    assert features.shape == (2, 48)  # (B, num_features): the mean of the final-norm patch tokens
    torch.testing.assert_close(features, tokens[:, 1:].mean(1))


def test_load_model_of_a_pretrain_run_is_the_runs_model(pretrained):
    out = pretrained
    ckpt = torch.load(out / "checkpoint-last.pt", weights_only=True)
    ours, _ = build_pretrain_model(OmegaConf.merge(OmegaConf.structured(Config), ckpt["config"]))
    ours.load_state_dict(ckpt["model"])
    ours.eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.stack([block_mask(2, 2, 0.5, generator=i).reshape(-1) for i in range(2)])
    for path in (out, out / "checkpoint-last.pt"):
        model = load_model(str(path))
        assert isinstance(model, MaskFeat) and not model.training
        with torch.no_grad():
            for a, b in zip(model(x, mask), ours(x, mask)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    encoder = load_model(str(out / "encoder.safetensors"))  # the encoder alone: pooled features
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), ours.encoder.forward_head(ours.encoder.forward_features(x)))


def test_load_model_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no weights in the folder"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="no such file or folder"):
        load_model(str(tmp_path / "missing"))
