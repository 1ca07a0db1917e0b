"""Nothing lost: pre-emption signals, corrupt checkpoints, broken data, disk errors, safe loading, DDP."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import write_images
from test_cli import ROOT, TINY, maskfeat, rows

from maskfeat.checkpoint import atomic_write, load_checkpoint


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "maskfeat", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def test_sigterm_saves_at_the_step_boundary_exits_75_and_the_rerun_resumes(tmp_path, image_folder):
    out = tmp_path / "run"
    args = ["pretrain", *TINY, f"data.path={image_folder}", f"output_dir={out}", "train.epochs=60",
            "train.checkpoint_every=0", "data.num_workers=0"]  # fmt: skip
    proc = _start(args)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len(rows(out / "metrics.jsonl")) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert "checkpoint saved, rerun the same command to resume" in stderr
    step = torch.load(out / "checkpoint-last.pt", weights_only=True)["step"]
    assert 3 <= step < 360 and rows(out / "metrics.jsonl")[-1]["step"] == step  # nothing after the save
    r = maskfeat(*args)
    assert r.returncode == 0, r.stderr
    assert f"resuming from {out / 'checkpoint-last.pt'} at step {step}/360" in r.stderr
    assert [m["step"] for m in rows(out / "metrics.jsonl")] == list(range(1, 361))


def test_ctrl_c_saves_at_the_step_boundary_exits_130_and_the_rerun_resumes(tmp_path, image_folder):
    out = tmp_path / "run"
    args = ["pretrain", *TINY, f"data.path={image_folder}", f"output_dir={out}", "train.epochs=60",
            "train.checkpoint_every=0", "data.num_workers=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "maskfeat", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len(rows(out / "metrics.jsonl")) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the process and its data-loader workers
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "received SIGINT: saving a checkpoint at the end of this step" in stderr
    assert "interrupted at step" in stderr and "checkpoint saved, rerun the same command to resume" in stderr
    step = torch.load(out / "checkpoint-last.pt", weights_only=True)["step"]
    assert 3 <= step < 360 and rows(out / "metrics.jsonl")[-1]["step"] == step  # nothing lost, nothing after
    r = maskfeat(*args, f"train.max_steps={step + 2}")
    assert r.returncode == 0, r.stderr
    assert f"resuming from {out / 'checkpoint-last.pt'} at step {step}/360" in r.stderr
    assert [m["step"] for m in rows(out / "metrics.jsonl")] == list(range(1, step + 3))


def test_a_second_ctrl_c_stops_at_once_but_the_same_one_forwarded_again_does_not():
    from maskfeat.distributed import PreemptionSignals

    with PreemptionSignals(every=1) as signals:
        signals.REPEAT_S = 0.5
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: save at the step boundary, no exception here
            os.kill(os.getpid(), signal.SIGINT)  # at once again: torchrun's agent forwarding the same Ctrl-C
            time.sleep(0.6)
        except KeyboardInterrupt:
            pytest.fail("a first Ctrl-C stopped the run at once")
        assert signals.flag and signals.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a person pressing Ctrl-C again
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_good_one(tmp_path, image_folder):
    out = tmp_path / "run"
    base = ["pretrain", *TINY, f"data.path={image_folder}", f"output_dir={out}", "train.epochs=2",
            "train.checkpoint_every=4", "data.num_workers=0"]  # fmt: skip
    r = maskfeat(*base, "train.max_steps=8")
    assert r.returncode == 0, r.stderr
    last = out / "checkpoint-last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # torn file
    r = maskfeat(*base)
    assert r.returncode == 0, r.stderr
    assert f"cannot read checkpoint {last}" in r.stderr and "trying an older checkpoint" in r.stderr
    assert f"resuming from {out / 'checkpoint-00000008.pt'} at step 8/12" in r.stderr
    assert torch.load(last, weights_only=True)["step"] == 12


def test_too_many_broken_files_stop_the_run_and_name_them(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, 8)
    broken = [folder / f"broken_{i}.jpg" for i in range(4)]
    for b in broken:
        b.write_bytes(b"\xff\xd8\xff garbage")
    r = maskfeat("pretrain", *TINY, f"data.path={folder}", f"output_dir={tmp_path / 'run'}", "train.epochs=3",
                 "data.num_workers=0", "data.max_bad_fraction=0.1")  # fmt: skip
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("maskfeat: error: ") and "more than data.max_bad_fraction=0.1" in last
    named = last.split("max_bad_fraction=0.1: ")[1].split(", ")
    assert named and set(named) <= {str(b) for b in broken}  # it stops at the first check past the limit


def test_atomic_write_keeps_the_old_file_when_the_disk_fills(tmp_path):
    target = tmp_path / "checkpoint-last.pt"
    target.write_bytes(b"old good checkpoint")

    def full_disk(f):
        f.write(b"partial new checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(str(target), full_disk)
    assert target.read_bytes() == b"old good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pt"]  # no temporary file left behind


def test_pickled_checkpoints_need_an_explicit_flag(tmp_path, image_folder, pretrained):
    pre = pretrained
    ckpt = torch.load(pre / "checkpoint-last.pt", weights_only=True)
    ckpt["note"] = argparse.Namespace(origin="elsewhere")  # an arbitrary pickled object
    unsafe = tmp_path / "unsafe.pt"
    torch.save(ckpt, unsafe)
    with pytest.raises(ValueError, match="pickled Python objects.*model.allow_pickle=true"):
        load_checkpoint(str(unsafe))
    assert load_checkpoint(str(unsafe), allow_pickle=True)["note"].origin == "elsewhere"
    labeled = tmp_path / "labeled"
    shutil.copytree(image_folder, labeled / "a")
    shutil.copytree(image_folder, labeled / "b")
    args = ["finetune", *TINY, f"data.path={labeled}", "train.epochs=1", "data.num_workers=0",
            f"model.checkpoint={unsafe}"]  # fmt: skip
    r = maskfeat(*args, f"output_dir={tmp_path / 'ft1'}")
    assert r.returncode == 2 and "model.allow_pickle=true" in r.stderr
    r = maskfeat(*args, f"output_dir={tmp_path / 'ft2'}", "model.allow_pickle=true")
    assert r.returncode == 0, r.stderr


def _ddp_worker(rank: int, world: int, port: int, x: torch.Tensor, m: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    from test_model import tiny_maskfeat

    model = torch.nn.parallel.DistributedDataParallel(tiny_maskfeat(img=32), broadcast_buffers=False)
    half = len(x) // world
    loss = model(x[rank * half : (rank + 1) * half], m[rank * half : (rank + 1) * half])[0]
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
    dist.destroy_process_group()


def test_two_process_gloo_ddp_gives_the_gradients_of_one_process_on_the_global_batch(tmp_path):
    from test_model import tiny_maskfeat

    from maskfeat.masking import block_mask

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    m = torch.stack([block_mask(2, 2, 0.5, generator=i) for i in range(4)])  # the same count in every sample
    port = 29500 + os.getpid() % 1000
    mp.spawn(_ddp_worker, args=(2, port, x, m, str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    torch.manual_seed(0)
    single = tiny_maskfeat(img=32)
    single(x, m)[0].backward()
    for name, p in single.named_parameters():
        torch.testing.assert_close(ddp[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_torchrun_two_cpu_processes_record_world_size(tmp_path, image_folder):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "maskfeat",
           "pretrain", *TINY, f"data.path={image_folder}", f"output_dir={out}", "train.epochs=2",
           "data.num_workers=0"]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world_size: 2" in (out / "config.yaml").read_text()
    assert "broadcast_buffers" not in r.stderr  # DDP's deprecated argument used to warn once per process
    assert "lr: 6.25e-06" in (out / "config.yaml").read_text()  # 2e-4 x (4 x 2 processes) / 256
    # 24 images / 2 ranks / batch 4 = 3 steps per epoch, logged once (rank 0 only)
    assert [m["step"] for m in rows(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert (out / "encoder.safetensors").is_file()


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "maskfeat",
           *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_fsdp_trains_like_ddp_and_resumes_exactly(tmp_path, image_folder):
    from safetensors.torch import load_file

    base = ["pretrain", *TINY, "model.depth=2", "model.drop_path=0.1", f"data.path={image_folder}", "train.epochs=2",
            "data.num_workers=0", "train.batch_size=2", "train.accum_steps=2", "train.checkpoint_every=0"]  # fmt: skip
    r = _torchrun([*base, f"output_dir={tmp_path / 'ddp'}"])
    assert r.returncode == 0, r.stderr[-3000:]
    fsdp = [*base, "train.strategy=fsdp", f"output_dir={tmp_path / 'fsdp'}"]
    r = _torchrun([*fsdp, "train.max_steps=3"])  # stops at step 3 with a checkpoint, like a pre-empted run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FSDP: 2 blocks and the rest of the model sharded over 2 processes" in r.stderr
    ckpt = torch.load(tmp_path / "fsdp" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["sharded"] and len(ckpt["rng_ranks"]) == 2
    assert set(ckpt["model"]) == set(torch.load(tmp_path / "ddp" / "checkpoint-last.pt", weights_only=True)["model"])
    r = _torchrun(fsdp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "at step 3/6" in r.stderr
    # uninterrupted, with activation checkpointing (recomputes the same values in the backward pass)
    once_dir = tmp_path / "fsdp_once"
    r = _torchrun([*base, "train.strategy=fsdp", "model.grad_checkpointing=true", f"output_dir={once_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = load_file(tmp_path / "ddp" / "encoder.safetensors")
    resumed = load_file(tmp_path / "fsdp" / "encoder.safetensors")
    once = load_file(once_dir / "encoder.safetensors")
    assert set(ddp) == set(resumed) == set(once)
    for name, w in ddp.items():
        assert torch.equal(resumed[name], once[name]), name  # stopped-and-resumed FSDP == uninterrupted FSDP
        # (with drop path on: each rank's random state came back from the checkpoint)
        torch.testing.assert_close(resumed[name], w, rtol=1e-4, atol=1e-5, msg=name)  # FSDP == DDP
    # training went on after the resume: most weights changed between step 3 and step 6
    moved = sum(not torch.equal(ckpt["model"]["encoder." + n], w) for n, w in once.items())
    assert moved > len(once) // 2
    # resuming a sharded run as an unsharded one is refused with one line
    # (one process is another world_size: that alone stops the rerun, unless forced)
    r = subprocess.run([sys.executable, "-m", "maskfeat", *fsdp, "train.epochs=3"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "train.epochs: 2 -> 3; " in r.stderr and "world_size: 2 -> 1)" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "maskfeat", *fsdp, "train.epochs=3", "train.resume=force"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "was written by a sharded (train.strategy=fsdp) run" in r.stderr, r.stderr[-2000:]
