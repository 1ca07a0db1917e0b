"""Several processes and several nodes with PyTorch's own launcher (torchrun, gloo on the CPU): the same data-quality
verdict for any number of processes, and a two-node run on one machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_images
from test_cli import ROOT, TINY, maskfeat, rows

from maskfeat.data import SeededSampler

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# what a rank left waiting in a collective prints when another rank has stopped
GLOO_ERRORS = ("Connection closed", "gloo/transport", "ProcessGroupGloo", "DistBackendError", "Timed out")


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "maskfeat", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def _errors(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("maskfeat: error:")]


def _folder_with_two_broken_files_on_rank_0(folder: Path) -> list[Path]:
    """58 real images, 2 of them unreadable, placed where a 2-process run gives both to rank 0 in its 6th batch of 4
    (samples 20 and 21 of rank 0's epoch-0 share; samples 40 and 42 of a 1-process run's epoch 0)."""
    paths = sorted(write_images(folder, 58))  # sorted as the scan lists them
    rank0 = SeededSampler(58, seed=0, rank=0, world_size=2, drop_last=True).rank_indices()
    broken = [paths[i] for i in sorted(rank0[20:22])]
    for path in broken:
        path.write_bytes(b"\xff\xd8\xff not a jpeg")
    return sorted(broken)


# 2 of the 58 files (3.4%) are unreadable: under a 5% limit both train, over a 2% limit both stop with one line
@pytest.mark.parametrize("fraction", [0.05, 0.02])
def test_the_bad_file_limit_is_the_same_for_one_and_two_processes(tmp_path, fraction):
    folder = tmp_path / "imgs"
    broken = _folder_with_two_broken_files_on_rank_0(folder)
    args = ["pretrain", *TINY, f"data.path={folder}", "train.epochs=1", "data.num_workers=0",
            f"data.max_bad_fraction={fraction}"]  # fmt: skip
    one = maskfeat(*args, f"output_dir={tmp_path / 'one'}")
    two = _torchrun([*args, f"output_dir={tmp_path / 'two'}"])
    for r in (one, two):
        assert not any(text in r.stderr for text in GLOO_ERRORS), r.stderr[-3000:]
    if fraction == 0.05:
        assert one.returncode == 0, one.stderr[-3000:]
        assert two.returncode == 0, two.stderr[-3000:]
        assert [m["step"] for m in rows(tmp_path / "two" / "metrics.jsonl")] == list(range(1, 8))  # 29 // 4 steps
        summary = f"2 of the 58 files could not be decoded and were skipped: {broken[0]}, {broken[1]}"
        assert summary in one.stderr and summary in two.stderr
    else:
        expected = (f"maskfeat: error: 2 of the 58 files could not be decoded, more than "
                    f"data.max_bad_fraction=0.02: {broken[0]}, {broken[1]}")  # fmt: skip
        assert one.returncode == 2 and _errors(one) == [expected], one.stderr[-3000:]
        assert two.returncode != 0 and _errors(two) == [expected, expected], two.stderr[-3000:]  # from every rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(agent: subprocess.Popen) -> None:
    """Stop a torchrun agent and its workers (each in a session of its own): SIGTERM first, on which the agent
    stops its workers, then SIGKILL for whatever is left."""
    if agent.poll() is not None:
        return
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children")
    workers = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    agent.terminate()
    try:
        agent.wait(timeout=30)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_two_node_torchrun_on_one_machine(tmp_path, image_folder):
    """Two torchrun agents (one per "node", one process each) meet by c10d rendezvous on localhost, as the README's
    multi-node command does across machines; both share the output folder, as nodes share a file system."""
    out = tmp_path / "run"
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=maskfeat-test-{os.getpid()}-{port}",
           "--rdzv_conf=join_timeout=120", "--local_addr=127.0.0.1", "--max_restarts=0", "-m", "maskfeat",
           "pretrain", *TINY, f"data.path={image_folder}", f"output_dir={out}", "train.epochs=2",
           "data.num_workers=0"]  # fmt: skip
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    agents: list[subprocess.Popen] = []
    try:
        for log in logs:
            with open(log, "w") as f:  # to files, not pipes: nothing blocks on a full pipe
                agents.append(subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 240
        for agent in agents:
            agent.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for agent in agents:  # a failed or timed-out run leaves nothing behind
            _stop(agent)
    text = [log.read_text() for log in logs]
    assert [a.returncode for a in agents] == [0, 0], "\n---\n".join(t[-3000:] for t in text)
    assert "world_size: 2" in (out / "config.yaml").read_text()
    # 24 images / 2 ranks / batch 4 = 3 steps per epoch, each row written once (by global rank 0 only)
    assert [m["step"] for m in rows(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert sum(f"6 steps -> {out}" in t for t in text) == 1  # one node's process is rank 0 and reports the run
    assert (out / "encoder.safetensors").is_file() and (out / "checkpoint-last.pt").is_file()
    assert len(list((out / "tb").iterdir())) == 1 and not list(out.glob(".tmp-*"))  # one event file, no torn writes
