"""Video MaskFeat on an appearance task (Kinetics-like): CIFAR-10 images filmed under random camera motion.

Each clip films one CIFAR-10 image (its borders mirrored, so the camera never sees outside it) through a window of
60-85% of its side that pans in a random direction, zooms in or out and turns a little, at a speed that rises or
falls during the clip: 16 frames of 32x32, encoded as MPEG-4 in MP4 through PyAV, labelled by the image's class.
Training clips film CIFAR-10 training images (class-balanced), test clips film test images. Then, through the
command line, with the recipes unchanged:

    pretrain   configs/pretrain/video_cifar10.yaml on the training clips, labels unused
    finetune   configs/finetune/video_cifar10.yaml on a class-balanced 10% of them (data.label_fraction)
    scratch    the identical fine-tune from random weights

and prints the table (best and final top-1 over the test clips), read back from the runs' metrics.jsonl.

    python bench/video_cifar10.py                                   # 5,000 training clips, 1,000 test clips
    python bench/video_cifar10.py --train-clips 4000 --test-clips 800 --seed 1   # other images and motions
    python bench/video_cifar10.py --report-only
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
from cifar10 import finished, read_metrics, run_part  # noqa: E402
from cifar10_small import balanced_order, class_files  # noqa: E402

from maskfeat.data.sample import _write_mp4  # noqa: E402

FRAMES, SIZE, PAD = 16, 32, 16  # frames per clip, frame side, mirrored border around the 32-px image


def camera(rng: np.random.Generator) -> dict:
    """A random camera path: window side (pixels), pan direction and speed, zoom and turn per frame, speed change."""
    return {"side": rng.uniform(0.6, 0.85) * SIZE, "angle": rng.uniform(0, 2 * math.pi),
            "speed": rng.uniform(0.0, 0.6), "zoom": math.exp(rng.uniform(-0.015, 0.015)),
            "turn": math.radians(rng.uniform(-1.5, 1.5)), "accel": rng.uniform(-0.6, 0.6),
            "start": rng.uniform(-2.0, 2.0, 2)}  # fmt: skip


def film(image: np.ndarray, path: dict) -> list[np.ndarray]:
    """The frames (SIZE x SIZE RGB) of ``path`` over ``image`` (H x W x 3 uint8)."""
    source = Image.fromarray(np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect"))
    centre = np.array(image.shape[1::-1], dtype=float) / 2 + PAD + path["start"]
    direction = np.array([math.cos(path["angle"]), math.sin(path["angle"])])
    out = []
    for i in range(FRAMES):
        t = i + path["accel"] * i * (i - (FRAMES - 1)) / (FRAMES - 1)  # progress: the speed rises or falls
        cx, cy = centre + direction * path["speed"] * t
        k, a = path["side"] * path["zoom"] ** t / SIZE, path["turn"] * t
        m = (k * math.cos(a), -k * math.sin(a), k * math.sin(a), k * math.cos(a))  # output pixel -> source pixel
        c, f = cx - (m[0] + m[1]) * SIZE / 2, cy - (m[2] + m[3]) * SIZE / 2
        data = (m[0], m[1], c, m[2], m[3], f)
        out.append(np.asarray(source.transform((SIZE, SIZE), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)))
    return out


def make_clips(images: str, out: str, count: int, seed: int) -> str:
    """``out/<class>/<NNNNN>.mp4``: ``count`` clips of class-balanced images of ``images`` (made once)."""
    done = os.path.join(out, ".complete")
    if os.path.isfile(done):
        with open(done) as f:
            made = f.read().strip()
        if made != str(count):
            raise SystemExit(
                f"{out} holds {made or 'an unknown number of'} clips, not {count}: pass another --runs-dir"
            )
        return out
    rng = np.random.default_rng([seed, 13])
    for n, (c, name) in enumerate(balanced_order(class_files(images), seed)[:count]):
        os.makedirs(os.path.join(out, c), exist_ok=True)
        with Image.open(os.path.join(images, c, name)) as im:
            frames = film(np.asarray(im.convert("RGB")), camera(rng))
        _write_mp4(os.path.join(out, c, f"{n:05d}.mp4"), frames, fps=FRAMES)
    with open(done, "w") as f:
        f.write(str(count))
    return out


def plan(args: argparse.Namespace, train: str, test: str) -> dict[str, tuple[list[str], str | None]]:
    """Each part's command line and the part it needs first."""
    py, out = [sys.executable, "-m", "maskfeat"], lambda name: f"output_dir={os.path.join(args.runs_dir, name)}"
    encoder = os.path.join(args.runs_dir, "pretrain", "encoder.safetensors")
    pre = [*py, "pretrain", "-c", "configs/pretrain/video_cifar10.yaml", f"data.path={train}", out("pretrain")]
    ft = [*py, "finetune", "-c", "configs/finetune/video_cifar10.yaml", f"data.path={train}", f"data.val_path={test}",
          f"data.label_fraction={args.label_fraction}"]  # fmt: skip
    return {
        "pretrain": ([*pre, *args.extra], None),
        "scratch": ([*ft, *args.extra, out("scratch")], None),
        "finetune": ([*ft, *args.extra, out("finetune"), f"model.checkpoint={encoder}"], "pretrain"),
    }


def table(runs: dict, args: argparse.Namespace) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    rows = [
        "| run | top-1 best | top-1 final | loss first -> last | steps | wall |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    metrics = {name: read_metrics(os.path.join(args.runs_dir, name)) for name in runs}
    for name, m in metrics.items():
        loss = "-" if m["loss"] is None else f"{m['loss0']:.4f} -> {m['loss']:.4f}"
        wall = "-" if m["wall"] is None else f"{m['wall'] / 60:.1f} min"
        rows.append(f"| {name} | {fmt(m['best'])} | {fmt(m['final'])} | {loss} | {m['step']} | {wall} |")
    curves = [f"- {name}: " + ", ".join(f"{v:g}" for v in m["evals"]) for name, m in metrics.items() if m["evals"]]
    commands = [shlex.join(["python" if c == sys.executable else c for c in cmd]) for cmd, _ in runs.values()]
    return "\n".join(["\n".join(rows), "", "Per-epoch top-1:", "", *curves, "", "```", *commands, "```"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="CIFAR-10 root with train/ and test/ (default data/cifar10, else "
                    "../shared/data/cifar10)")  # fmt: skip
    ap.add_argument("--train-clips", type=int, default=5000)
    ap.add_argument("--test-clips", type=int, default=1000)
    ap.add_argument("--label-fraction", type=float, default=0.1, help="of the training clips, class-balanced")
    ap.add_argument("--seed", type=int, default=0, help="which images and which camera paths")
    ap.add_argument("--runs-dir", default=None, help="default runs/video_cifar10/seed<seed>")
    ap.add_argument("--parts", default="pretrain,scratch,finetune")
    ap.add_argument("--clips-only", action="store_true", help="make the clips and stop")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("extra", nargs="*", help="key=value overrides appended to every command")
    args = ap.parse_args()
    args.runs_dir = args.runs_dir or os.path.join("runs", "video_cifar10", f"seed{args.seed}")
    data = args.data or next((d for d in ("data/cifar10", "../shared/data/cifar10") if os.path.isdir(d)), None)
    if data is None:
        ap.error("no CIFAR-10 folder: pass --data (python scripts/prepare_cifar10.py writes data/cifar10)")
    t0 = time.time()
    clips = os.path.join(args.runs_dir, "clips")
    train = make_clips(os.path.join(data, "train"), os.path.join(clips, "train"), args.train_clips, args.seed)
    test = make_clips(os.path.join(data, "test"), os.path.join(clips, "test"), args.test_clips, args.seed + 1000)
    print(f"clips ready in {time.time() - t0:.0f} s: {train}, {test}", flush=True)
    if args.clips_only:
        return
    runs = plan(args, train, test)
    parts = [p for p in args.parts.split(",") if p]
    for name in parts if not args.report_only else []:
        need = runs[name][1]
        if need and not finished(os.path.join(args.runs_dir, need)):
            raise SystemExit(f"{name} needs {need}: run it first")
        if not finished(os.path.join(args.runs_dir, name)):
            run_part(name, runs[name][0], os.path.join(args.runs_dir, name), os.path.join(args.runs_dir, "logs"))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    minutes = (time.time() - t0) / 60
    print(f"\nvideo CIFAR-10, seed {args.seed}, {machine}, {time.strftime('%Y-%m-%d')}; {minutes:.1f} min\n")
    print(table({p: runs[p] for p in parts}, args))


if __name__ == "__main__":
    main()
