"""Unit tests for checkpoint.py's resume side: numbered-checkpoint order, the newest readable checkpoint, and a
resume round trip (weights, optimizer, scaler, step, best metrics, random states)."""

import os

import pytest
import torch
from omegaconf import OmegaConf

from maskfeat import checkpoint as ckpt_io
from maskfeat.config import Config
from maskfeat.distributed import model_state, optimizer_state


def _touch_checkpoint(path: str, step: int) -> None:
    ckpt_io.save_checkpoint(path, {"step": step})


def test_numbered_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    for step in (100, 9, 20):
        _touch_checkpoint(os.path.join(tmp_path, f"checkpoint-{step}.pt"), step)
    _touch_checkpoint(os.path.join(tmp_path, ckpt_io.LAST), 100)
    names = [os.path.basename(p) for p in ckpt_io.numbered_checkpoints(str(tmp_path))]
    assert names == ["checkpoint-9.pt", "checkpoint-20.pt", "checkpoint-100.pt"]


def test_newest_readable_falls_back_past_torn_files(tmp_path):
    out = str(tmp_path)
    assert ckpt_io.newest_readable(out) is None
    _touch_checkpoint(os.path.join(out, "checkpoint-00000004.pt"), 4)
    _touch_checkpoint(os.path.join(out, "checkpoint-00000008.pt"), 8)
    with open(os.path.join(out, "checkpoint-00000008.pt"), "r+b") as f:
        f.truncate(10)  # torn
    with open(os.path.join(out, ckpt_io.LAST), "wb") as f:
        f.write(b"not a checkpoint")
    path, state = ckpt_io.newest_readable(out)
    assert os.path.basename(path) == "checkpoint-00000004.pt" and state["step"] == 4
    os.unlink(path)
    with pytest.raises(ValueError, match="no readable checkpoint"):
        ckpt_io.newest_readable(out)


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_resume_training_restores_what_was_saved(tmp_path):
    cfg = OmegaConf.structured(Config)
    cfg.output_dir = str(tmp_path)
    model, optimizer = _model_and_optimizer(0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    torch.manual_seed(123)
    rngs = ckpt_io.gather_rng_states()
    expected_draw = torch.rand(3)
    state = {"model": model_state(model), "optimizer": optimizer_state(model, optimizer),
             "scaler": scaler.state_dict(), "step": 7, "rng": rngs[0], "rng_ranks": rngs, "sharded": False,
             "best": {"top1": 42.0}}  # fmt: skip
    ckpt_io.save_checkpoint(os.path.join(tmp_path, ckpt_io.LAST), state)

    other, other_opt = _model_and_optimizer(1)
    step, best = ckpt_io.resume_training(cfg, other, other_opt, scaler, sharded=False, total_steps=10)
    assert step == 7 and best == {"top1": 42.0}
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    saved_moments = optimizer.state_dict()["state"][0]["exp_avg"]
    torch.testing.assert_close(other_opt.state_dict()["state"][0]["exp_avg"], saved_moments, rtol=0, atol=0)
    torch.testing.assert_close(torch.rand(3), expected_draw, rtol=0, atol=0)  # random states restored

    with pytest.raises(ValueError, match="unsharded run"):
        ckpt_io.resume_training(cfg, other, other_opt, scaler, sharded=True, total_steps=10)


def test_resume_training_without_checkpoint_starts_at_step_zero(tmp_path):
    cfg = OmegaConf.structured(Config)
    cfg.output_dir = str(tmp_path)
    model, optimizer = _model_and_optimizer(0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    assert ckpt_io.resume_training(cfg, model, optimizer, scaler, False, 10) == (0, {"top1": float("-inf")})
