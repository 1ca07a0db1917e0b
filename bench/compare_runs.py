"""Print a markdown table of the evaluation results of finished runs (best and final top-1 from metrics.jsonl).

python bench/compare_runs.py runs/demo/finetune runs/demo/scratch
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def evaluations(run_dir: Path) -> list[dict]:
    """The evaluation rows (those with top1) of a run's metrics.jsonl, in order."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"no metrics.jsonl in {run_dir}: did the run finish?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "top1" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (output_dir of finetune / linprobe)")
    args = ap.parse_args()
    print("| run | best top-1 | final top-1 | final top-5 | epochs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        ev = evaluations(run)
        if not ev:
            print(f"| {run} | - | - | - | 0 |")
            continue
        best = max(r["top1"] for r in ev)
        print(f"| {run} | {best:.1f} | {ev[-1]['top1']:.1f} | {ev[-1]['top5']:.1f} | {len(ev)} |")


if __name__ == "__main__":
    main()
