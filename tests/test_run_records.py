"""A run's record is its own: evaluation and reruns never rewrite another run's files, bad checkpoints get the
right advice, and the files are as readable as the user's umask says."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_images
from test_cli import ROOT, TINY, maskfeat, rows

from maskfeat.config import load_config, to_yaml


@pytest.fixture(scope="module")
def finetuned(labeled, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "run"
    r = maskfeat("finetune", *TINY, f"data.path={labeled / 'train'}", f"data.val_path={labeled / 'val'}",
                 f"output_dir={out}", "train.epochs=1", "data.num_workers=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_evaluate_never_rewrites_the_run_it_evaluates(labeled, finetuned):
    before = _snapshot(finetuned)
    args = [*TINY, f"data.val_path={labeled / 'val'}", f"model.checkpoint={finetuned / 'checkpoint-best.pt'}",
            f"output_dir={finetuned}", "data.num_workers=0"]  # fmt: skip
    first, second = maskfeat("evaluate", *args), maskfeat("evaluate", *args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    after = _snapshot(finetuned)
    assert {k: v for k, v in after.items() if not k.startswith("eval-")} == before  # the run's files, untouched
    for n, r in ((1, first), (2, second)):  # each evaluation has a record of its own
        ev = finetuned / f"eval-{n}"
        assert f"this evaluation goes to {ev}" in r.stderr
        (row,) = rows(ev / "metrics.jsonl")
        assert row["checkpoint"] == str(finetuned / "checkpoint-best.pt") and 0 <= row["top1"] <= 100
        assert (ev / "config.yaml").is_file()


def test_evaluate_into_a_new_folder_writes_there(labeled, finetuned, tmp_path):
    out = tmp_path / "ev"
    r = maskfeat("evaluate", *TINY, f"data.val_path={labeled / 'val'}", f"output_dir={out}", "data.num_workers=0",
                 f"model.checkpoint={finetuned / 'checkpoint-best.pt'}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(rows(out / "metrics.jsonl")) == 1 and not list(out.glob("eval-*"))


def test_a_rerun_with_other_settings_stops_naming_the_keys(image_folder, tmp_path):
    out = tmp_path / "run"
    base = [*TINY, f"output_dir={out}", "train.max_steps=2", "data.num_workers=0"]
    assert maskfeat("pretrain", *base, f"data.path={image_folder}").returncode == 0
    record = _snapshot(out)
    other = tmp_path / "other"
    write_images(other, 24, seed=3)
    r = maskfeat("pretrain", *base, f"data.path={other}", "train.blr=1e-3")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"maskfeat: error: {out} holds a run with other settings (data.path: {image_folder} ->")
    assert "train.blr: 0.0002 -> 0.001" in line and "train.resume=force" in line and "output_dir=" in line
    assert _snapshot(out) == record  # nothing rewritten
    # the same settings resume (how the run is carried out may change: workers, logging, max_steps)
    r = maskfeat("pretrain", *base[:-2], "train.max_steps=3", "data.num_workers=1", f"data.path={image_folder}")
    assert r.returncode == 0 and "resuming from" in r.stderr, r.stderr
    r = maskfeat("pretrain", *base[:-2], "train.max_steps=4", f"data.path={other}", "train.resume=force")
    assert r.returncode == 0 and "train.resume=force: continuing the run" in r.stderr, r.stderr
    assert rows(out / "metrics.jsonl")[-1]["step"] == 4


def test_a_run_killed_before_its_first_checkpoint_is_still_its_record(image_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    args = [*TINY, f"output_dir={out}", "train.max_steps=1"]
    (out / "config.yaml").write_text(to_yaml(load_config("pretrain", None, [*args, f"data.path={tmp_path}"])))
    r = maskfeat("pretrain", *args, f"data.path={image_folder}")
    assert r.returncode == 2 and "holds a run with other settings (" in r.stderr
    assert (
        f"data.path: {tmp_path} -> {image_folder}" in r.stderr
    )  # (the file here is unresolved: data.hflip differs too)


def test_a_file_that_is_no_checkpoint_gets_no_pickle_advice(labeled, finetuned, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not weights\n" * 20)
    for extra in ([], ["model.allow_pickle=true"]):
        r = maskfeat("finetune", *TINY, f"data.path={labeled / 'train'}", f"model.checkpoint={text}", *extra,
                     f"output_dir={tmp_path / 'ft'}", "train.max_steps=1", "data.num_workers=0")  # fmt: skip
        assert r.returncode == 2
        assert r.stderr.strip().splitlines()[-1] == (
            f"maskfeat: error: cannot read checkpoint {text}: it is not a file written by torch.save (expected a "
            "checkpoint-*.pt, or an encoder.safetensors)"
        )
    r = maskfeat("export", str(text), str(tmp_path / "exp"), "--allow-pickle")  # export takes the option
    assert r.returncode == 2 and "not a file written by torch.save" in r.stderr and "allow_pickle" not in r.stderr
    r = maskfeat("visualize", *TINY, f"model.checkpoint={finetuned / 'checkpoint-last.pt'}",
                 f"output_dir={tmp_path / 'vis'}")  # fmt: skip
    assert r.returncode == 2
    assert "visualize needs a pre-training checkpoint (from maskfeat pretrain)" in r.stderr
    assert "a finetune checkpoint" in r.stderr and "state_dict" not in r.stderr


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_respect_the_umask(image_folder, tmp_path, umask):
    out = tmp_path / "run"
    code = ("import os, sys; os.umask(int(sys.argv[1])); from maskfeat.cli import main; "
            "sys.exit(main(sys.argv[2:]))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code, str(umask), "pretrain", *TINY, f"data.path={image_folder}",
                        f"output_dir={out}", "train.max_steps=2", "data.num_workers=0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "metrics.jsonl", "checkpoint-last.pt", "encoder.safetensors", "encoder.json"} <= names
    modes = {str(p.relative_to(out)): stat.S_IMODE(os.stat(p).st_mode) for p in files}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
