"""The command line as a user runs it: real processes, real files, real images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.name=vit_tiny_patch16_224",
    "model.depth=1",
    "model.embed_dim=32",
    "model.num_heads=2",
    "data.image_size=32",
    "train.batch_size=4",
    "train.log_every=1",
    "train.warmup_epochs=1",
]


def maskfeat(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "maskfeat", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("command", ["pretrain", "visualize", "export", "convert"])
def test_every_command_answers_help(command):
    r = maskfeat(command, "--help")
    assert r.returncode == 0 and "usage: maskfeat " + command in r.stdout


@pytest.mark.parametrize(
    "args, status",
    [(["--help"], 0), (["pretrain", "--help"], 0), (["export", "--help"], 0), (["convert", "--help"], 0),
     (["pretrain", "train.epoch=1"], 2), (["pretrain", "-c", "missing.yaml"], 2), (["finetune", "train.amp=fp8"], 2)],
)  # fmt: skip
def test_help_and_config_errors_do_not_import_torch(args, status):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "maskfeat", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == status
    imported = [line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert "maskfeat.cli" in imported  # the import log is complete
    assert not [m for m in imported if m.split(".")[0] in ("torch", "timm", "torchvision")]
    if status:  # one line, as ever
        assert [line for line in r.stderr.splitlines() if not line.startswith("import time:")][0].startswith(
            "maskfeat: error: "
        )


def test_mistyped_key_fails_with_one_line_and_no_traceback(tmp_path):
    r = maskfeat("pretrain", "-c", "configs/pretrain/demo.yaml", "train.epoch=1", f"output_dir={tmp_path}")
    assert r.returncode == 2
    assert r.stderr.strip() == "maskfeat: error: command line: unknown key 'train.epoch'; did you mean train.epochs?"
    assert not list(tmp_path.iterdir())  # nothing started


def test_pretrain_end_to_end_with_awkward_files(tmp_path, image_folder):
    (image_folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    Image.new("L", (20, 12), 90).save(image_folder / "gray_small.png")  # grey, smaller than the crop
    Image.new("RGBA", (40, 40), (10, 200, 30, 0)).save(image_folder / "transparent.png")
    out = tmp_path / "run"
    r = maskfeat(
        "pretrain",
        *TINY,
        f"data.path={image_folder}",
        f"output_dir={out}",
        "train.epochs=2",
        "data.num_workers=0",
        "data.max_bad_fraction=0.2",
    )
    assert r.returncode == 0, r.stderr
    assert f"skipped unreadable image {image_folder / 'broken.jpg'}" in r.stderr
    for name in ("config.yaml", "metrics.jsonl", "checkpoint-last.pt", "encoder.safetensors", "encoder.json"):
        assert (out / name).is_file(), name
    assert list((out / "tb").iterdir())  # TensorBoard event file
    metrics = rows(out / "metrics.jsonl")
    # 27 images -> 6 batches of 4 per epoch, 2 epochs, one row per step
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert {m["epoch"] for m in metrics} == {0, 1}
    assert all(m["loss"] > 0 for m in metrics)
    assert metrics[-1]["bad_images"] >= 1
    cfg = (out / "config.yaml").read_text()
    assert "world_size: 1" in cfg and "lr: 3.125e-06" in cfg  # blr 2e-4 x batch 4 / 256

    meta = json.loads((out / "encoder.json").read_text())
    assert meta["architecture"] == "vit_tiny_patch16_224"
    timm_model = timm.create_model(meta["architecture"], pretrained=False, **{"num_classes": 0, **meta["model_args"]})
    timm_model.load_state_dict(load_file(out / "encoder.safetensors"), strict=True)
    ckpt = torch.load(out / "checkpoint-last.pt", weights_only=True)
    ours = {k[len("encoder.") :]: v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
    for k, v in timm_model.state_dict().items():
        assert torch.equal(v, ours[k]), k
    assert "mask_token" not in load_file(out / "encoder.safetensors")

    vis = maskfeat("visualize", *TINY, f"data.path={image_folder}", f"output_dir={out}", "visualize.num_images=3")
    assert vis.returncode == 0, vis.stderr
    pngs = sorted((out / "visualize").glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size[0] > 4 * 224

    exp = maskfeat("export", str(out / "checkpoint-last.pt"), str(tmp_path / "exported"))
    assert exp.returncode == 0, exp.stderr
    assert (
        load_file(tmp_path / "exported" / "encoder.safetensors").keys() == load_file(out / "encoder.safetensors").keys()
    )


def test_empty_folder_is_an_error_naming_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = maskfeat("pretrain", *TINY, f"data.path={empty}", f"output_dir={tmp_path / 'run'}")
    assert r.returncode == 2
    assert str(empty) in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _run_args(image_folder: Path, out: Path) -> list[str]:
    return [
        "pretrain",
        *TINY,
        f"data.path={image_folder}",
        f"output_dir={out}",
        "train.epochs=40",
        "train.checkpoint_every=5",
        "data.num_workers=2",
        "seed=3",
        "model.drop_path=0.1",
    ]


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, image_folder):
    ref = tmp_path / "ref"
    r = maskfeat(*_run_args(image_folder, ref))
    assert r.returncode == 0, r.stderr

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskfeat", *_run_args(image_folder, out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not (out / "checkpoint-last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)  # let it run past the checkpoint, so work after it is lost
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "encoder.safetensors").exists(), "the run finished before it could be killed"
    killed_at = torch.load(out / "checkpoint-last.pt", weights_only=True)["step"]
    assert 0 < killed_at < 240

    r = maskfeat(*_run_args(image_folder, out))
    assert r.returncode == 0, r.stderr
    assert f"resuming from {out / 'checkpoint-last.pt'} at step {killed_at}/240" in r.stderr
    a, b = load_file(ref / "encoder.safetensors"), load_file(out / "encoder.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [m["step"] for m in rows(out / "metrics.jsonl")] == list(range(1, 241))
    assert rows(out / "metrics.jsonl")[-1]["loss"] == rows(ref / "metrics.jsonl")[-1]["loss"]


def test_torch_compile_path_trains(tmp_path, image_folder):
    out = tmp_path / "run"
    r = maskfeat("pretrain", *TINY, f"data.path={image_folder}", f"output_dir={out}", "train.epochs=1",
                 "data.num_workers=0", "train.compile=true")  # fmt: skip
    assert r.returncode == 0, r.stderr
    losses = [m["loss"] for m in rows(out / "metrics.jsonl")]
    assert len(losses) == 6 and all(0 < v < 1 for v in losses)
