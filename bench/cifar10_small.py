"""CIFAR-10 with little data: the gain of MaskFeat pre-training against the unlabeled-set size and the label count.

Builds nested, class-balanced subsets of a CIFAR-10 ImageFolder as folders of symbolic links (one seeded order of
the training images, classes taken in turn, so the first ``u`` images hold ``u / 10`` of each class and the first
``l`` of them are the labeled ones, the same ``l`` images for every ``u``), then runs the image recipes unchanged
(``configs/pretrain/cifar10.yaml`` on the ``u`` unlabeled images; ``configs/finetune/cifar10.yaml`` on the ``l``
labeled ones, from that encoder and from scratch), evaluating on a class-balanced held-out subset of the test
images. Every number of the table is read back from the runs' metrics.jsonl.

    python bench/cifar10_small.py --unlabeled 10000 --labels 1000            # the 10k / 1k protocol
    python bench/cifar10_small.py --unlabeled 5000,10000,50000 --labels 1000,5000 --jobs 2
    python bench/cifar10_small.py --unlabeled 10000 --labels 1000 --seed 1    # other subsets of the same sizes
    python bench/cifar10_small.py --unlabeled 10000 --labels 1000 --report-only

Runs go to ``--runs-dir`` (default runs/cifar10_small/seed<seed>): ``pretrain_u<u>``, ``ft_u<u>_l<l>``,
``scratch_l<l>``. A finished run is not redone; an unfinished one resumes, as the CLI does.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import platform
import shlex
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar10 import finished, read_metrics, run_part  # noqa: E402

EXTENSIONS = (".jpg", ".jpeg", ".png")


def class_files(root: str) -> dict[str, list[str]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return {c: sorted(f for f in os.listdir(os.path.join(root, c)) if f.lower().endswith(EXTENSIONS)) for c in classes}


def balanced_order(files: dict[str, list[str]], seed: int) -> list[tuple[str, str]]:
    """Every (class, file), each class shuffled by ``seed``, the classes taken in turn."""
    rng = np.random.default_rng(seed)
    shuffled = {c: [names[i] for i in rng.permutation(len(names))] for c, names in files.items()}
    order = []
    for k in range(max(len(v) for v in shuffled.values())):
        order += [(c, v[k]) for c, v in shuffled.items() if k < len(v)]
    return order


def link_subset(src: str, items: list[tuple[str, str]], dst: str) -> str:
    """``dst/<class>/<file>`` symbolic links to ``src/<class>/<file>`` for ``items`` (made once)."""
    done = os.path.join(dst, ".complete")
    if not os.path.isfile(done):
        for c, name in items:
            os.makedirs(os.path.join(dst, c), exist_ok=True)
            link = os.path.join(dst, c, name)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(os.path.join(src, c, name)), link)
        open(done, "w").close()
    return dst


def make_subsets(data: str, out: str, unlabeled: list[int], labels: list[int], test: int, seed: int) -> dict:
    order = balanced_order(class_files(os.path.join(data, "train")), seed)
    test_order = balanced_order(class_files(os.path.join(data, "test")), seed + 1000)
    folders = {f"u{u}": link_subset(os.path.join(data, "train"), order[:u], os.path.join(out, f"unlabeled_{u}"))
               for u in unlabeled}  # fmt: skip
    folders |= {f"l{n}": link_subset(os.path.join(data, "train"), order[:n], os.path.join(out, f"labeled_{n}"))
                for n in labels}  # fmt: skip
    folders["test"] = link_subset(os.path.join(data, "test"), test_order[:test], os.path.join(out, f"test_{test}"))
    return folders


def plan(args: argparse.Namespace, folders: dict) -> dict[str, tuple[list[str], str | None]]:
    """``{run: (command, run it needs)}``."""
    py = [sys.executable, "-m", "maskfeat"]
    runs: dict[str, tuple[list[str], str | None]] = {}
    for u in args.unlabeled:
        out = os.path.join(args.runs_dir, f"pretrain_u{u}")
        runs[f"pretrain_u{u}"] = (py + ["pretrain", "-c", "configs/pretrain/cifar10.yaml", f"output_dir={out}",
                                        f"data.path={folders[f'u{u}']}", *args.extra], None)  # fmt: skip
    for n in args.labels:
        ft = ["finetune", "-c", "configs/finetune/cifar10.yaml", f"data.path={folders[f'l{n}']}",
              f"data.val_path={folders['test']}", *args.extra]  # fmt: skip
        runs[f"scratch_l{n}"] = (py + ft + [f"output_dir={os.path.join(args.runs_dir, f'scratch_l{n}')}"], None)
        for u in (u for u in args.unlabeled if u >= n):
            weights = os.path.join(args.runs_dir, f"pretrain_u{u}", "encoder.safetensors")
            out = os.path.join(args.runs_dir, f"ft_u{u}_l{n}")
            runs[f"ft_u{u}_l{n}"] = (py + ft + [f"output_dir={out}", f"model.checkpoint={weights}"], f"pretrain_u{u}")
    return runs


def schedule(runs: dict[str, tuple[list[str], str | None]], args: argparse.Namespace) -> None:
    todo = [r for r in runs if not finished(os.path.join(args.runs_dir, r))]
    done = set(runs) - set(todo)
    running: dict[cf.Future, str] = {}
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while todo or running:
            for r in [r for r in todo if runs[r][1] is None or runs[r][1] in done]:
                if len(running) < args.jobs:
                    todo.remove(r)
                    out, log_dir = os.path.join(args.runs_dir, r), os.path.join(args.runs_dir, "logs")
                    running[pool.submit(run_part, r, runs[r][0], out, log_dir)] = r
            finished_now, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished_now:
                fut.result()
                done.add(running.pop(fut))


def table(runs: dict[str, tuple[list[str], str | None]], args: argparse.Namespace) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    rows = ["| unlabeled | labels | pre-trained best | pre-trained final | scratch best | scratch final | gain (final) "
            "| pre-training loss first -> last | wall pre-train / fine-tune / scratch |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]  # fmt: skip
    for n in args.labels:
        s = read_metrics(os.path.join(args.runs_dir, f"scratch_l{n}"))
        for u in (u for u in args.unlabeled if u >= n):
            p = read_metrics(os.path.join(args.runs_dir, f"pretrain_u{u}"))
            f = read_metrics(os.path.join(args.runs_dir, f"ft_u{u}_l{n}"))
            gain = "-" if None in (f["final"], s["final"]) else f"{f['final'] - s['final']:+.2f}"
            loss = "-" if p["loss"] is None else f"{p['loss0']:.4f} -> {p['loss']:.4f}"
            wall = " / ".join("-" if m["wall"] is None else f"{m['wall'] / 60:.1f} min" for m in (p, f, s))
            rows.append(f"| {u} | {n} | {fmt(f['best'])} | {fmt(f['final'])} | {fmt(s['best'])} | {fmt(s['final'])} "
                        f"| {gain} | {loss} | {wall} |")  # fmt: skip
    lines = ["\n".join(rows), "", "Commands (from the repository root):", "", "```"]
    lines += [shlex.join(["python" if c == sys.executable else c for c in cmd]) for cmd, _ in runs.values()]
    return "\n".join([*lines, "```"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="CIFAR-10 root with train/ and test/ (default data/cifar10, else "
                    "../shared/data/cifar10)")  # fmt: skip
    ap.add_argument("--unlabeled", default="10000", help="comma-separated unlabeled-set sizes")
    ap.add_argument("--labels", default="1000", help="comma-separated label counts (the first of the unlabeled)")
    ap.add_argument("--test", type=int, default=2000, help="held-out test images (class-balanced)")
    ap.add_argument("--seed", type=int, default=0, help="which subsets")
    ap.add_argument("--runs-dir", default=None, help="default runs/cifar10_small/seed<seed>")
    ap.add_argument("--jobs", type=int, default=1, help="runs at the same time (they share the CPU)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--report-only", action="store_true", help="print the table of the runs already there")
    ap.add_argument("extra", nargs="*", help="key=value overrides appended to every command")
    args = ap.parse_args()
    args.unlabeled = [int(x) for x in args.unlabeled.split(",")]
    args.labels = [int(x) for x in args.labels.split(",")]
    args.runs_dir = args.runs_dir or os.path.join("runs", "cifar10_small", f"seed{args.seed}")
    data = args.data or next((d for d in ("data/cifar10", "../shared/data/cifar10") if os.path.isdir(d)), None)
    if data is None:
        ap.error("no CIFAR-10 folder: pass --data (python scripts/prepare_cifar10.py writes data/cifar10)")
    folders = make_subsets(data, os.path.join(args.runs_dir, "data"), args.unlabeled, args.labels, args.test,
                           args.seed)  # fmt: skip
    runs = plan(args, folders)
    if args.dry_run:
        print("\n".join(shlex.join(cmd) for cmd, _ in runs.values()))
        return
    t0 = time.time()
    if not args.report_only:
        schedule(runs, args)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    print(f"\nCIFAR-10 small, subsets seed {args.seed}, {machine}, {time.strftime('%Y-%m-%d')}; this invocation "
          f"{(time.time() - t0) / 60:.1f} min\n")  # fmt: skip
    print(table(runs, args))


if __name__ == "__main__":
    main()
