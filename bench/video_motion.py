"""Video MaskFeat on a motion task: does pre-training on unlabeled clips help a video ViT tell camera motions?

The clips are made here from real images: each is a window panning (left/right/up/down) or zooming (in/out)
over one CIFAR-10 image, encoded as MP4 with PyAV (``maskfeat.data.sample_video_folder(photos=...)``); the label
is the motion, which one frame alone cannot tell. Training clips film CIFAR-10 training images, validation clips
film test images. Then, through the command line:

    pretrain   video MaskFeat (cube masks, HOG of the first frame of each 2-frame patch) on the training clips,
               labels unused
    finetune   the motion classifier from that encoder
    scratch    the identical fine-tune from random weights

and prints the table (best and final top-1 over the validation clips, 2 temporal clips x 3 crops each).

    python bench/video_motion.py                      # the CPU setting of BENCHMARKS.md
    python bench/video_motion.py --target pixel --runs-dir runs/video_motion_pixel   # pixel target instead
    python bench/video_motion.py --clips-per-class 50 --pretrain-epochs 2 --finetune-epochs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from maskfeat.data import sample_video_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"

# A video ViT on 32x32 clips of 8 frames (stride 2 over 16): 2x16x16 tubelets -> a 4x2x2 token grid.
MODEL = ["model.name=vit_s", "model.embed_dim=128", "model.depth=4", "model.num_heads=4", "data.image_size=32",
         "video.num_frames=8", "video.frame_stride=2", "video.short_side=[32,40]", "data.hflip=0.0"]  # fmt: skip
# target.cell_size=8: the official 8-px cells (the video demo config, which these runs start from, has 16-px ones)
PRETRAIN = ["mask.type=cube", "mask.ratio=0.4", "mask.unit=[1,1,1]", "train.batch_size=32", "train.lr=1e-3",
            "train.warmup_epochs=2", "data.crop_scale=[0.6,1.0]", "train.log_every=20",
            "target.cell_size=8"]  # fmt: skip
FINETUNE = ["train.batch_size=32", "train.lr=1e-3", "train.warmup_epochs=2", "train.layer_decay=0.85",
            "train.mixup=0.0", "train.cutmix=0.0", "data.auto_augment=null", "data.reprob=0.0",
            "data.crop_scale=[0.6,1.0]", "video.num_clips=2", "video.num_crops=3", "train.log_every=20"]  # fmt: skip


def run(name: str, cmd: list[str], out: Path) -> float:
    """Run one command (skipped when ``out`` already holds its finished run); returns its wall time."""
    if (out / "metrics.jsonl").is_file() and any(out.glob("encoder.safetensors")):
        print(f"{name}: already done in {out}", flush=True)
        return float("nan")
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {shlex.join(cmd)}", flush=True)
    t0 = time.time()
    with open(out.parent / f"{name}.log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {out.parent / (name + '.log')}")
    return time.time() - t0


def summary(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "top1" in r]
    train = [r for r in rows if "loss" in r and "top1" not in r]
    return {
        "best": max(r["top1"] for r in evals) if evals else None,
        "final": evals[-1]["top1"] if evals else None,
        "per_epoch": [round(r["top1"], 1) for r in evals],
        "loss": (train[0]["loss"], train[-1]["loss"]) if train else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=CIFAR, help="folder with train/ and test/ image folders")
    ap.add_argument("--clips-per-class", type=int, default=200, help="training clips per motion (6 motions)")
    ap.add_argument("--val-clips-per-class", type=int, default=50)
    ap.add_argument("--pretrain-epochs", type=int, default=40)
    ap.add_argument("--finetune-epochs", type=int, default=30)
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "video_motion")
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--target", default="hog", choices=("hog", "pixel"), help="pre-training target")
    args = ap.parse_args()

    data = args.runs_dir / "data"
    t0 = time.time()
    train = sample_video_folder(root=str(data / "train"), split="train", clips_per_class=args.clips_per_class,
                                frames=16, size=32, photos=str(args.images / "train"))  # fmt: skip
    val = sample_video_folder(root=str(data / "val"), split="val", clips_per_class=args.val_clips_per_class,
                              frames=16, size=32, photos=str(args.images / "test"))  # fmt: skip
    print(f"clips ready in {time.time() - t0:.0f} s: {train}, {val}", flush=True)

    py = [sys.executable, "-m", "maskfeat"]
    common = [*MODEL, f"data.num_workers={args.num_workers}"]
    pre, ft, scratch = (args.runs_dir / n for n in ("pretrain", "finetune", "scratch"))
    wall = {}
    wall["pretrain"] = run("pretrain", [*py, "pretrain", "-c", "configs/pretrain/video_demo.yaml", *common, *PRETRAIN,
                                        f"data.path={train}", f"train.epochs={args.pretrain_epochs}",
                                        f"target.name={args.target}",
                                        f"output_dir={pre}"], pre)  # fmt: skip
    tune = [*py, "finetune", "-c", "configs/finetune/video_demo.yaml", *common, *FINETUNE, f"data.path={train}",
            f"data.val_path={val}", f"train.epochs={args.finetune_epochs}"]  # fmt: skip
    wall["finetune"] = run("finetune", [*tune, f"model.checkpoint={pre / 'encoder.safetensors'}",
                                        f"output_dir={ft}"], ft)  # fmt: skip
    wall["scratch"] = run("scratch", [*tune, f"output_dir={scratch}"], scratch)

    print("\n| run | top-1 best | top-1 final | loss first -> last | wall |")
    print("| --- | ---: | ---: | --- | ---: |")
    for name, out in (("pretrain", pre), ("finetune", ft), ("scratch", scratch)):
        s = summary(out)
        best = "-" if s["best"] is None else f"{s['best']:.1f}"
        final = "-" if s["final"] is None else f"{s['final']:.1f}"
        loss = "-" if s["loss"] is None else f"{s['loss'][0]:.4f} -> {s['loss'][1]:.4f}"
        minutes = wall[name] / 60
        print(f"| {name} | {best} | {final} | {loss} | {minutes:.1f} min |")
    for name, out in (("finetune", ft), ("scratch", scratch)):
        print(f"{name} top-1 per epoch: {summary(out)['per_epoch']}")
    print(f"chance: {100 / 6:.1f}%; machine: {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
