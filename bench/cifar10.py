"""CIFAR-10 reproduction: MaskFeat pre-training without labels vs the identical fine-tune from scratch.

Runs the whole protocol through the command line (one subprocess, one output folder per run under
``--runs-dir``, default runs/cifar10/<name>), reads every run's metrics.jsonl and prints a markdown table
(run, labels, target, best / final top-1, wall time) followed by the exact commands.

    python bench/cifar10.py                                  # the CPU protocol (configs/*/cifar10.yaml)
    python bench/cifar10.py --parts pretrain_hog,ft10,scratch10 --jobs 2
    python bench/cifar10.py --gpu                            # configs/*/cifar10_gpu.yaml (untested here)
    python bench/cifar10.py --pretrain-epochs 8 --finetune-epochs 50 --dry-run
    python bench/cifar10.py --report-only                    # only the table, from the runs already there

Parts (a part runs after the parts it needs; a run whose folder already holds a finished run is not redone,
``--force`` redoes it; an unfinished one resumes from its checkpoint, as the CLI does):

    pretrain_hog      pre-train on the training images, HOG target (labels unused)
    pretrain_pixel    the same with the normalised-pixel target (target.name=pixel)
    ft10, ft100       fine-tune the HOG encoder on 10% / 100% of the labels
    ft10_pixel, ft100_pixel   the same from the pixel encoder
    scratch10, scratch100     the identical fine-tune from random weights
    linprobe, linprobe_pixel  linear probe of the frozen HOG / pixel encoder (10% of the labels by default)

Run from the repository root. The configs read data/cifar10/{train,test} (write it with
``python scripts/prepare_cifar10.py``); ``--data`` overrides it, and with neither the script uses
../shared/data/cifar10 where a developer's checkout has it. Every number in the table is read back from the
runs' metrics.jsonl.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import shlex
import subprocess
import sys
import time

PARTS = {  # name: (command, needs, label fraction key, target)
    "pretrain_hog": ("pretrain", None, None, "hog"),
    "pretrain_pixel": ("pretrain", None, None, "pixel"),
    "ft10": ("finetune", "pretrain_hog", "ten", "hog"),
    "ft100": ("finetune", "pretrain_hog", "full", "hog"),
    "ft10_pixel": ("finetune", "pretrain_pixel", "ten", "pixel"),
    "ft100_pixel": ("finetune", "pretrain_pixel", "full", "pixel"),
    "scratch10": ("finetune", None, "ten", "none (scratch)"),
    "scratch100": ("finetune", None, "full", "none (scratch)"),
    "linprobe": ("linprobe", "pretrain_hog", "probe", "hog"),
    "linprobe_pixel": ("linprobe", "pretrain_pixel", "probe", "pixel"),
}
DEFAULT_PARTS = "pretrain_hog,pretrain_pixel,scratch10,ft10,ft10_pixel,linprobe,linprobe_pixel,scratch100,ft100"


def build_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    suffix = "_gpu" if args.gpu else ""
    py = [sys.executable, "-m", "maskfeat"]
    data = []
    if args.data is None and not os.path.isdir("data/cifar10") and os.path.isdir("../shared/data/cifar10"):
        args.data = "../shared/data/cifar10"
    if args.data:
        data = [f"data.path={os.path.join(args.data, 'train')}", f"data.val_path={os.path.join(args.data, 'test')}"]
    fractions = {"ten": 0.1, "full": 1.0, "probe": args.linprobe_fraction}
    cmds: dict[str, list[str]] = {}
    for name, (command, needs, frac, target) in PARTS.items():
        out = os.path.join(args.runs_dir, name)
        cmd = py + [command, "-c", f"configs/{command}/cifar10{suffix}.yaml", f"output_dir={out}"]
        if command == "pretrain":
            cmd += data[:1] + [f"target.name={target}"]
            if args.pretrain_epochs:
                cmd.append(f"train.epochs={args.pretrain_epochs}")
        else:
            cmd += data + [f"data.label_fraction={fractions[frac]}"]
            if needs:
                cmd.append(f"model.checkpoint={os.path.join(args.runs_dir, needs, 'encoder.safetensors')}")
            epochs = {"ten": args.finetune_epochs, "full": args.finetune100_epochs, "probe": args.linprobe_epochs}[frac]
            if epochs:
                cmd.append(f"train.epochs={epochs}")
        if args.num_workers is not None:
            cmd.append(f"data.num_workers={args.num_workers}")
        cmd += args.extra
        cmds[name] = cmd
    return cmds


def read_metrics(out: str) -> dict:
    """Best, final and every top-1 (evaluation rows), first and last training loss, steps, wall time of a run folder."""
    path = os.path.join(out, "metrics.jsonl")
    res: dict = {"best": None, "final": None, "loss0": None, "loss": None, "step": None, "wall": None, "evals": []}
    if not os.path.isfile(path):
        return res
    evals, losses = [], []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "top1" in row:
                evals.append(row["top1"])
            elif "loss" in row:
                losses.append(row["loss"])
                res["step"] = row.get("step")
    if evals:
        res["best"], res["final"], res["evals"] = max(evals), evals[-1], evals
    if losses:
        res["loss0"], res["loss"] = losses[0], losses[-1]
    wall = os.path.join(out, "bench_wall.json")
    if os.path.isfile(wall):
        with open(wall) as f:
            res["wall"] = json.load(f)["seconds"]
    elif os.path.isfile(os.path.join(out, "config.yaml")):  # run by hand: start (config.yaml) to last metrics row
        res["wall"] = os.path.getmtime(path) - os.path.getmtime(os.path.join(out, "config.yaml"))
    return res


def finished(out: str) -> bool:
    return os.path.isfile(os.path.join(out, "bench_wall.json"))


def run_part(name: str, cmd: list[str], out: str, log_dir: str) -> float:
    os.makedirs(log_dir, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(log_dir, f"{name}.log"), "w") as log:
        print(f"[{time.strftime('%H:%M:%S')}] start {name}: {shlex.join(cmd)}", flush=True)
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"{name} failed (exit {rc}); see {os.path.join(log_dir, name + '.log')}")
    with open(os.path.join(out, "bench_wall.json"), "w") as f:
        json.dump({"seconds": seconds, "command": cmd}, f)
    print(f"[{time.strftime('%H:%M:%S')}] done {name} in {seconds / 60:.1f} min", flush=True)
    return seconds


def schedule(parts: list[str], cmds: dict[str, list[str]], args: argparse.Namespace) -> None:
    """Run ``parts`` with at most ``--jobs`` at a time, each after the pre-training it needs."""
    todo = [p for p in parts if args.force or not finished(os.path.join(args.runs_dir, p))]
    done = {p for p in PARTS if p not in todo}
    running: dict[cf.Future, str] = {}
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while todo or running:
            for p in list(todo):
                need = PARTS[p][1]
                if len(running) < args.jobs and (need is None or need in done):
                    if need and not os.path.isfile(os.path.join(args.runs_dir, need, "encoder.safetensors")):
                        raise RuntimeError(f"{p} needs {need}: add it to --parts or run it first")
                    if args.force and os.path.isdir(os.path.join(args.runs_dir, p)):
                        subprocess.call(["rm", "-rf", os.path.join(args.runs_dir, p)])
                    todo.remove(p)
                    out = os.path.join(args.runs_dir, p)
                    running[pool.submit(run_part, p, cmds[p], out, os.path.join(args.runs_dir, "logs"))] = p
            if not running:
                raise RuntimeError(f"cannot schedule {todo}: what they need is not in --parts")
            fin, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in fin:
                fut.result()
                done.add(running.pop(fut))


def table(parts: list[str], cmds: dict[str, list[str]], args: argparse.Namespace) -> str:
    labels = {"ten": "10% (5,000)", "full": "100% (50,000)", "probe": f"{args.linprobe_fraction:.0%}", None: "none"}
    rows = ["| run | command | labels | target | top-1 best | top-1 final | loss first -> last | wall |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for p in parts:
        command, _, frac, target = PARTS[p]
        m = read_metrics(os.path.join(args.runs_dir, p))
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        loss = "-" if m["loss"] is None else f"{m['loss0']:.4f} -> {m['loss']:.4f}"
        wall = "-" if m["wall"] is None else f"{m['wall'] / 60:.1f} min"
        rows.append(f"| {p} | {command} | {labels[frac]} | {target} | {fmt(m['best'])} | {fmt(m['final'])} | "
                    f"{loss} | {wall} |")  # fmt: skip
    lines = ["\n".join(rows), "", "Commands (from the repository root):", "", "```"]
    lines += [shlex.join(["python" if c == sys.executable else c for c in cmds[p]]) for p in parts]
    lines.append("```")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=DEFAULT_PARTS, help=f"comma-separated, from: {', '.join(PARTS)}")
    ap.add_argument("--runs-dir", default="runs/cifar10")
    ap.add_argument("--data", default=None, help="CIFAR-10 root with train/ and test/ (default: the configs')")
    ap.add_argument("--gpu", action="store_true", help="use the *_gpu.yaml configs")
    ap.add_argument("--pretrain-epochs", type=int, default=0, help="0 = the config's")
    ap.add_argument("--finetune-epochs", type=int, default=0, help="10%% fine-tunes; 0 = the config's")
    ap.add_argument("--finetune100-epochs", type=int, default=5, help="100%% fine-tunes; 0 = the config's")
    ap.add_argument("--linprobe-epochs", type=int, default=0, help="0 = the config's")
    ap.add_argument("--linprobe-fraction", type=float, default=0.1, help="labels for the linear probe")
    ap.add_argument("--num-workers", type=int, default=None, help="data.num_workers for every run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at the same time (they share the CPU)")
    ap.add_argument("--force", action="store_true", help="redo runs that already finished")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--report-only", action="store_true", help="print the table of the runs already there")
    ap.add_argument("extra", nargs="*", help="key=value overrides appended to every command")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    cmds = build_commands(args)
    if args.dry_run:
        print("\n".join(shlex.join(cmds[p]) for p in parts))
        return
    t0 = time.time()
    if not args.report_only:
        schedule(parts, cmds, args)
    print(f"\nCIFAR-10, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"{time.strftime('%Y-%m-%d')}; this invocation {(time.time() - t0) / 60:.1f} min\n")  # fmt: skip
    print(table(parts, cmds, args))


if __name__ == "__main__":
    main()
