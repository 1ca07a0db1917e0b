"""bench/gpu_check.py, the prepared GPU check, run as ``--device cpu --tiny``: the same code paths as on a GPU
(the real CLI runs, the measurement children, the scheduler, the reports), so that it cannot rot before a GPU
comes. One end-to-end run (about a minute on two cores); every assertion reads the files it wrote."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["environment", "cli", "vit_step", "vit_compiled", "sync", "memory", "mvit", "jpeg_decode"]


def _measured(value) -> bool:
    """A measured figure: a finite number, or a yes/no or a word (a check's outcome)."""
    if isinstance(value, (bool, str)):
        return True
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_gpu_check_tiny_cpu_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out),
           "--work", str(tmp_path / "work")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == SECTIONS
    for name, sec in sections.items():
        # on the CPU every part runs (nothing failed, nothing ran out of time) or says why it cannot
        assert sec["status"] in ("ok", "skipped"), (name, sec.get("reason"), log)
        if sec["status"] == "skipped":
            assert sec["reason"].startswith("skipped: needs CUDA"), (name, sec["reason"])
        for fig in sec["figures"]:
            if fig.get("skipped"):
                assert fig["value"] is None and fig["skipped"].startswith("skipped:"), (name, fig)
            else:
                assert _measured(fig["value"]), (name, fig)
            if fig["baseline"] is not None:
                assert _measured(fig["baseline"]), (name, fig)
    env = sections["environment"]["details"]
    assert env["mode"] == "tiny" and env["device"] == "cpu" and env["torch"]

    figures = {name: {f["name"]: f for f in sec["figures"]} for name, sec in sections.items()}
    cli = figures["cli"]
    # every CLI run finished with finite losses; the comparisons that hold exactly on the CPU did
    runs = [f for n, f in cli.items() if n.startswith("maskfeat ") and "finite losses" in n]
    assert len(runs) >= 6 and all(f["pass"] is True for f in runs), runs
    bf16 = next(f for n, f in cli.items() if n.startswith("bf16 vs fp32"))
    assert bf16["pass"] is True and 0 < bf16["value"] <= 0.05  # bf16 autocast changes the losses, a little
    resume = next(f for n, f in cli.items() if n.startswith("SIGKILL after step"))
    assert resume["pass"] is True and resume["value"] == 0  # the CPU is bit-for-bit repeatable
    assert cli["train.strategy=fsdp with one process"]["value"] == "no-op (trained unsharded)"
    assert next(f for n, f in cli.items() if n.startswith("train.compile=true"))["skipped"].startswith(
        "skipped: needs CUDA"
    )
    # the measurements, each beside its baseline
    step = next(f for n, f in figures["vit_step"].items() if "pre-training step" in n)
    assert step["value"] > 0 and step["baseline"] > 0 and step["ratio"] == step["value"] / step["baseline"]
    assert any(n.startswith("HOG target per step") and f["ratio"] < 1 for n, f in figures["vit_step"].items())
    compiled = next(f for n, f in figures["vit_compiled"].items() if "pre-training step" in n)
    assert compiled["value"] > 0 and "compiled" in compiled["baseline_name"]
    assert figures["sync"]["host-device syncs per step"]["skipped"] == "skipped: needs CUDA"
    assert all(f["value"] > 0 for f in figures["memory"].values())
    assert all(f["value"] > 0 and f["baseline"] > 0 for f in figures["mvit"].values())
    assert sum(f.get("skipped") == "skipped: needs CUDA" for f in figures["jpeg_decode"].values()) == 2

    md = (out / "gpu_check.md").read_text()
    assert "| part | figure | value | baseline | ratio | goal | result |" in md
    for name in SECTIONS[1:]:
        assert f"\n| {name} | " in md, name
    assert "--device cpu --tiny" in md  # the command, for BENCHMARKS.md
