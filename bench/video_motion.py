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
    python bench/video_motion.py --runs-dir runs/vm_tube --data-dir runs/video_motion/data --pretrain-set mask.type=tube

``--model-set`` (both runs), ``--pretrain-set`` and ``--finetune-set`` add ``key=value`` overrides. The scratch run
does not depend on pre-training: it goes to ``runs/video_motion_scratch/<key>``, ``key`` a hash of its settings, so
experiments with the same model and fine-tune settings share one.
"""

from __future__ import annotations

import argparse
import hashlib
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
    log_path = out.parent / f"{out.name}.log"
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {log_path}")
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
        "baseline": (train[0]["baseline"], train[-1]["baseline"]) if train and "baseline" in train[0] else None,
    }


def scratch_key(args: argparse.Namespace) -> str:
    """A short hash of everything the scratch run depends on: the clips, the model and the fine-tune settings."""
    settings = [str(args.images.resolve()), args.clips_per_class, args.val_clips_per_class, args.finetune_epochs,
                MODEL, args.model_set, FINETUNE, args.finetune_set]  # fmt: skip
    return hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:10]


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
    ap.add_argument("--data-dir", type=Path, default=None, help="where the clips go (default: RUNS_DIR/data)")
    ap.add_argument("--pretrain-dir", type=Path, default=None, help="the pre-training run (default: RUNS_DIR/pretrain)")
    for part in ("model", "pretrain", "finetune"):
        ap.add_argument(f"--{part}-set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"extra overrides for {'both runs' if part == 'model' else part}")  # fmt: skip
    args = ap.parse_args()

    data = args.data_dir or args.runs_dir / "data"
    t0 = time.time()
    train = sample_video_folder(root=str(data / "train"), split="train", clips_per_class=args.clips_per_class,
                                frames=16, size=32, photos=str(args.images / "train"))  # fmt: skip
    val = sample_video_folder(root=str(data / "val"), split="val", clips_per_class=args.val_clips_per_class,
                              frames=16, size=32, photos=str(args.images / "test"))  # fmt: skip
    print(f"clips ready in {time.time() - t0:.0f} s: {train}, {val}", flush=True)

    py = [sys.executable, "-m", "maskfeat"]
    common = [*MODEL, *args.model_set, f"data.num_workers={args.num_workers}"]
    pre, ft = args.pretrain_dir or args.runs_dir / "pretrain", args.runs_dir / "finetune"
    scratch = args.runs_dir.parent / "video_motion_scratch" / scratch_key(args)
    wall = {}
    wall["pretrain"] = run("pretrain", [*py, "pretrain", "-c", "configs/pretrain/video_demo.yaml", *common, *PRETRAIN,
                                        f"data.path={train}", f"train.epochs={args.pretrain_epochs}",
                                        f"target.name={args.target}", *args.pretrain_set,
                                        f"output_dir={pre}"], pre)  # fmt: skip
    tune = [*py, "finetune", "-c", "configs/finetune/video_demo.yaml", *common, *FINETUNE, f"data.path={train}",
            f"data.val_path={val}", f"train.epochs={args.finetune_epochs}", *args.finetune_set]  # fmt: skip
    wall["finetune"] = run("finetune", [*tune, f"model.checkpoint={pre / 'encoder.safetensors'}",
                                        f"output_dir={ft}"], ft)  # fmt: skip
    wall["scratch"] = run("scratch", [*tune, f"output_dir={scratch}"], scratch)

    print(f"\nscratch run: {scratch}")
    print("| run | top-1 best | top-1 final | loss first -> last | baseline first -> last | wall |")
    print("| --- | ---: | ---: | --- | --- | ---: |")
    for name, out in (("pretrain", pre), ("finetune", ft), ("scratch", scratch)):
        s = summary(out)
        best = "-" if s["best"] is None else f"{s['best']:.1f}"
        final = "-" if s["final"] is None else f"{s['final']:.1f}"
        loss = "-" if s["loss"] is None else f"{s['loss'][0]:.4f} -> {s['loss'][1]:.4f}"
        base = "-" if s["baseline"] is None else f"{s['baseline'][0]:.4f} -> {s['baseline'][1]:.4f}"
        minutes = wall[name] / 60
        print(f"| {name} | {best} | {final} | {loss} | {base} | {minutes:.1f} min |")
    for name, out in (("finetune", ft), ("scratch", scratch)):
        print(f"{name} top-1 per epoch: {summary(out)['per_epoch']}")
    print(f"chance: {100 / 6:.1f}%; machine: {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
