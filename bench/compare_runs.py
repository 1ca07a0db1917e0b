"""Compare the evaluation results of finished fine-tune / linear-probe runs, with their sampling noise.

python bench/compare_runs.py runs/demo/finetune runs/demo/scratch [--pretrain runs/demo/pretrain]

Prints a markdown table (final and best top-1 from each run's metrics.jsonl, the number of validation samples and
the binomial standard error of the final top-1), then one verdict per run against the first: the difference of
final top-1 and whether it is larger than two standard errors of that difference. The error counts only the
sampling of the validation set (a run's accuracy on n samples), not the spread over training seeds, so a
difference under two errors is noise and one over it is evidence from a single pair of runs, not proof.

The number of validation samples is read from the run (``samples`` in its evaluation rows, else the files of the
validation folder named in its config.yaml, or the embedded sample set it used); ``--val-samples`` overrides it.
``--pretrain`` first prints a pre-training run's masked-feature loss over its last epoch beside its mean-target
baseline (the loss of predicting, for every masked token, the mean target of the batch's masked tokens).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def evaluations(run_dir: Path) -> list[dict]:
    """The evaluation rows (those with top1) of a run's metrics.jsonl, in order."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"no metrics.jsonl in {run_dir}: did the run finish?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "top1" in r]


def validation_set(run_dir: Path) -> tuple[int | None, int | None]:
    """(number of validation samples, number of classes) of a run, from its config.yaml; (None, None) if unknown."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None, None
    try:
        from omegaconf import OmegaConf

        from maskfeat.builder import is_video, labeled_folders

        cfg = OmegaConf.load(path)
        _, val = labeled_folders(cfg, need_train=False)  # data.val_path, or the embedded sample set the run used
        if val is None:
            return None, None
        if is_video(cfg):
            from maskfeat.data.video import scan_video_source

            _, labels, classes = scan_video_source(val)
        else:
            from maskfeat.data.images import scan_image_folder

            _, labels, classes = scan_image_folder(val)
        return len(labels), (len(classes) or None)
    except Exception:  # an unreadable config or a folder that is gone: the count is unknown, not an error
        return None, None


def pretrain_summary(run_dir: Path) -> str:
    """One line on a pre-training run: its masked loss against the mean-target baseline over its last epoch."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"no metrics.jsonl in {run_dir}: did the run finish?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "baseline" in r and "loss" in r]
    if not rows:
        return f"{run_dir}: no rows with a mean-target baseline in metrics.jsonl (a run of an older version?)"
    last = [r for r in rows if r.get("epoch") == rows[-1].get("epoch")]
    loss = sum(r["loss"] for r in last) / len(last)
    base = sum(r["baseline"] for r in last) / len(last)
    return (
        f"{run_dir}: masked-feature loss {loss:.4f} over its last epoch, against {base:.4f} for predicting the mean "
        f"target of each batch ({100 * (loss / base - 1):+.0f}%; 0% = nothing learnt from the visible context)"
    )


def standard_error(top1: float, n: int) -> float:
    """Binomial standard error, in points, of an accuracy of ``top1`` percent measured on ``n`` samples."""
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def verdict(name_a: str, top1_a: float, n_a: int | None, name_b: str, top1_b: float, n_b: int | None) -> str:
    """One sentence on whether final top-1 ``top1_a`` (run a) differs from ``top1_b`` (run b) beyond noise."""
    diff = top1_a - top1_b
    if not n_a or not n_b:
        return (
            f"{name_a} vs {name_b}: {diff:+.1f} points of final top-1; the number of validation samples is unknown "
            "(pass --val-samples), so its noise cannot be judged"
        )
    se = math.hypot(standard_error(top1_a, n_a), standard_error(top1_b, n_b))
    apart = diff / 100.0 * min(n_a, n_b)
    head = (
        f"{name_a} vs {name_b}: {diff:+.1f} points of final top-1 (about {abs(apart):.0f} of {min(n_a, n_b)} "
        f"validation samples), standard error of the difference {se:.1f} points"
    )
    if abs(diff) < 2 * se or (se == 0 and diff == 0):
        return f"{head}: within noise (under 2 standard errors): these runs do not tell the two apart"
    better = name_a if diff > 0 else name_b
    return (
        f"{head}: {abs(diff) / se:.1f} standard errors, more than sampling noise: {better} is ahead on this "
        "validation set (one run each: the spread over training seeds is not measured)"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (output_dir of finetune / linprobe)")
    ap.add_argument("--val-samples", type=int, default=None, help="number of validation samples (default: from runs)")
    ap.add_argument("--pretrain", type=Path, default=None, help="a pre-training run: print its loss vs its baseline")
    args = ap.parse_args(argv)
    if args.pretrain is not None:
        print(pretrain_summary(args.pretrain))
        print()
    print("| run | final top-1 ± s.e. | best top-1 (epoch) | final top-5 | epochs | val samples | chance |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    finals: list[tuple[str, float, int | None]] = []
    notes: list[str] = []
    for run in args.runs:
        ev = evaluations(run)
        if not ev:
            print(f"| {run} | - | - | - | 0 | - | - |")
            continue
        n, classes = validation_set(run)
        n = args.val_samples or ev[-1].get("samples") or n
        final = ev[-1]["top1"]
        best = max(ev, key=lambda r: r["top1"])
        se = f" ± {standard_error(final, n):.1f}" if n else ""
        chance = 100.0 / classes if classes else None
        print(
            f"| {run} | {final:.1f}{se} | {best['top1']:.1f} ({best.get('epoch', '?')}) | {ev[-1]['top5']:.1f} | "
            f"{len(ev)} | {n or '?'} | {f'{chance:.1f}' if chance else '?'} |"
        )
        finals.append((str(run), final, n))
        if chance is not None and n and final - chance < 2 * standard_error(chance, n):
            notes.append(f"{run}: final top-1 {final:.1f} is within noise of chance ({chance:.1f}%) or below it")
    print()
    print("s.e.: binomial standard error of the final top-1 on the validation samples; best top-1 is picked on the")
    print("same validation set, so it is optimistic.")
    for note in notes:
        print(note)
    if finals:
        name_a, top1_a, n_a = finals[0]
        for name_b, top1_b, n_b in finals[1:]:
            print(verdict(name_a, top1_a, n_a, name_b, top1_b, n_b))


if __name__ == "__main__":
    main()
