"""What the demo shows a user: the pre-training loss beside its mean-target baseline, and fine-tune comparisons
that say when a difference is noise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import TINY, maskfeat, rows
from torch import nn

from maskfeat.engine import Job, LoopOptions, LoopStats, train_one_epoch
from maskfeat.models import MaskFeat, create_encoder, encoder_model_args
from maskfeat.models.maskfeat import masked_mse, mean_target_mse
from maskfeat.optim import build_optimizer, build_scheduler
from maskfeat.pretrain import masked_feature_loss
from maskfeat.targets import build_target
from maskfeat.tracking import baseline_note

ROOT = Path(__file__).resolve().parents[1]


def numpy_baseline(target: np.ndarray, mask: np.ndarray) -> float:
    """The independent computation: per-dimension population variance of the masked targets, averaged."""
    picked = target.reshape(-1, target.shape[-1])[mask.reshape(-1)]
    return float(picked.var(axis=0, ddof=0).mean())


def test_mean_target_mse_is_the_variance_of_the_masked_targets():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(3, 7, 5)).astype(np.float32) * rng.uniform(0.5, 3, size=5).astype(np.float32)
    mask = rng.random((3, 7)) < 0.4
    t = torch.from_numpy(target).requires_grad_(True)
    m = torch.from_numpy(mask)
    got = mean_target_mse(t, m)
    assert not got.requires_grad
    assert got.item() == pytest.approx(numpy_baseline(target, mask), rel=1e-5)
    # it is the masked MSE of the mean of the masked targets, and no other constant does better
    mean = torch.from_numpy(target.reshape(-1, 5)[mask.reshape(-1)].mean(0))
    assert masked_mse(mean.expand(3, 7, 5), t.detach(), m).item() == pytest.approx(got.item(), rel=1e-5)
    for shift in (0.05, -0.1):
        assert masked_mse((mean + shift).expand(3, 7, 5), t.detach(), m).item() > got.item()
    # unmasked tokens do not count: changing them changes nothing
    t2 = t.detach().clone()
    t2[~m] = 100.0
    assert mean_target_mse(t2, m).item() == pytest.approx(got.item(), rel=1e-6)


def test_masked_feature_loss_returns_the_baseline_of_its_batch():
    torch.manual_seed(0)
    args = encoder_model_args(32, 8, 32, 1, 2)
    model = MaskFeat(create_encoder("vit_tiny_patch16_224", args, num_classes=0), build_target("hog", 8))
    images = torch.randn(4, 3, 32, 32)
    masks = torch.rand(4, 4, 4) < 0.4
    loss, extras = masked_feature_loss(model, {"images": images, "masks": masks})
    assert loss.requires_grad and set(extras) == {"baseline"}
    target = model.target(images).numpy()  # (4, 16, 27)
    assert extras["baseline"].item() == pytest.approx(numpy_baseline(target, masks.reshape(4, -1).numpy()), rel=1e-5)


def test_loss_fn_extras_are_averaged_like_the_loss_and_logged():
    """A loss_fn returning (loss, extras): each row holds each extra averaged over the micro-batches and steps."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    batches = [{"images": torch.full((2, 2), float(i)), "num_bad": 0} for i in range(8)]

    def loss_fn(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        x = batch["images"]
        return net(x).pow(2).mean(), {"baseline": x[0, 0].clone(), "twice": 2 * x[0, 0]}

    opt = build_optimizer(model, 1e-3, 0.0)
    sched = build_scheduler(opt, 4, 0, 1e-6, 1e-6)
    logged: list[dict] = []

    class Rows:
        def write(self, row: dict, bad_files: list) -> None:
            logged.append(row)

    opts = LoopOptions(device=torch.device("cpu"), accum_steps=2, log_every=2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    job = Job(model=model, loss_fn=loss_fn, optimizer=opt, scheduler=sched, loader=batches, sampler=None,
              steps_per_epoch=4, total_steps=4)  # fmt: skip
    assert train_one_epoch(job, scaler, opts, 0, LoopStats(), Rows()) == 4
    # steps of micro-batches (0, 1), (2, 3) | (4, 5), (6, 7): per step the mean, per row the mean of the steps
    assert [r["step"] for r in logged] == [2, 4]
    assert [r["baseline"] for r in logged] == pytest.approx([1.5, 5.5])
    assert [r["twice"] for r in logged] == pytest.approx([3.0, 11.0])
    assert all(isinstance(r["loss"], float) for r in logged)


def test_baseline_note_reads_the_loss_against_the_baseline():
    assert baseline_note(0.0310, 0.0457) == "mean-target baseline 0.0457, -32%"
    assert baseline_note(0.05, 0.04) == "mean-target baseline 0.0400, +25%"


def test_pretrain_logs_and_prints_the_baseline_and_visualize_prints_it(tmp_path, image_folder):
    out = tmp_path / "run"
    r = maskfeat("pretrain", *TINY, f"data.path={image_folder}", f"output_dir={out}", "train.epochs=1",
                 "data.num_workers=0", "model.patch_size=8")  # fmt: skip
    assert r.returncode == 0, r.stderr
    metrics = rows(out / "metrics.jsonl")
    assert len(metrics) == 6 and all(0 < m["baseline"] < 1 for m in metrics)
    last = metrics[-1]
    rel = 100 * (last["loss"] / last["baseline"] - 1)
    assert f"loss {last['loss']:.4f} (mean-target baseline {last['baseline']:.4f}, {rel:+.0f}%)" in r.stderr

    vis = maskfeat("visualize", *TINY, f"data.path={image_folder}", f"output_dir={out}", "visualize.num_images=3")
    assert vis.returncode == 0, vis.stderr
    lines = [ln for ln in vis.stderr.splitlines() if "masked-HOG loss" in ln]
    assert len(lines) == 4 and all("mean-target baseline" in ln for ln in lines)
    assert lines[-1].startswith("the 3 images together: masked-HOG loss ")


def write_run(folder: Path, top1s: list[float], config: str | None = None) -> Path:
    folder.mkdir(parents=True)
    lines = [{"step": 4 * i, "epoch": i, "loss": 1.0, "lr": 1e-3} for i in range(len(top1s))]
    lines += [{"step": 4 * i + 4, "epoch": i, "top1": t, "top5": 90.0, "loss": 1.0} for i, t in enumerate(top1s)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if config is not None:
        (folder / "config.yaml").write_text(config)
    return folder


def compare(*args: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_runs.py"), *args], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_compare_runs_calls_a_one_crop_difference_noise(tmp_path):
    a = write_run(tmp_path / "finetune", [40.0, 61.1, 59.0])
    b = write_run(tmp_path / "scratch", [35.0, 56.2, 56.2])
    text = compare(str(a), str(b), "--val-samples", "144")
    assert f"| {a} | 59.0 ± 4.1 | 61.1 (1) | 90.0 | 3 | 144 |" in text
    assert f"| {b} | 56.2 ± 4.1 |" in text
    verdict = text.strip().splitlines()[-1]
    assert verdict.startswith(f"{a} vs {b}: +2.8 points of final top-1 (about 4 of 144 validation samples)")
    assert "standard error of the difference 5.8 points" in verdict
    assert "within noise" in verdict and "do not tell the two apart" in verdict


def test_compare_runs_says_when_a_difference_is_beyond_noise(tmp_path):
    a = write_run(tmp_path / "a", [51.9])
    b = write_run(tmp_path / "b", [41.0])
    verdict = compare(str(a), str(b), "--val-samples", "10000").strip().splitlines()[-1]
    assert "more than sampling noise" in verdict and f"{a} is ahead" in verdict and "within noise" not in verdict
    # the same accuracies on 100 samples are noise
    assert "within noise" in compare(str(a), str(b), "--val-samples", "100")


def test_compare_runs_reads_the_validation_set_from_the_run_and_flags_chance(tmp_path):
    val = tmp_path / "val"
    for k, cls in enumerate(("a", "b", "c", "d")):
        (val / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8), (60 * k, 10 * i, 0)).save(val / cls / f"{i}.png")
    config = f"data:\n  path: {val}\n  val_path: {val}\nmodel:\n  name: vit_tiny_patch16_224\n"
    a = write_run(tmp_path / "a", [30.0], config)
    b = write_run(tmp_path / "b", [20.0], config)
    text = compare(str(a), str(b))
    assert f"| {a} | 30.0 ± 10.2 | 30.0 (0) | 90.0 | 1 | 20 | 25.0 |" in text  # 20 samples, 4 classes
    assert f"{a}: final top-1 30.0 is within noise of chance (25.0%)" in text
    assert f"{b}: final top-1 20.0 is within noise of chance (25.0%)" in text
    # without a config the count is unknown and the verdict says so
    c = write_run(tmp_path / "c", [30.0])
    d = write_run(tmp_path / "d", [20.0])
    assert "the number of validation samples is unknown" in compare(str(c), str(d))


def test_compare_runs_prints_the_pretraining_loss_against_its_baseline(tmp_path):
    run = tmp_path / "pretrain"
    run.mkdir()
    lines = [
        {"step": 8, "epoch": 0, "loss": 0.09, "baseline": 0.05},
        {"step": 16, "epoch": 1, "loss": 0.030, "baseline": 0.046},
        {"step": 24, "epoch": 1, "loss": 0.032, "baseline": 0.044},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    a = write_run(tmp_path / "a", [30.0])
    text = compare(str(a), "--pretrain", str(run))
    assert text.splitlines()[0].startswith(
        f"{run}: masked-feature loss 0.0310 over its last epoch, against 0.0450 for predicting the mean target of "
        "each batch (-31%;"
    )
