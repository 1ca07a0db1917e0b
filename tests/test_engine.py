"""The plain loop (engine.train_steps) and where fit stops it (runner._next_stop)."""

from __future__ import annotations

import torch
from torch import nn

from maskfeat.engine import Job, LoopOptions, LoopStats, train_one_epoch, train_steps
from maskfeat.optim import build_optimizer, build_scheduler
from maskfeat.runner import _next_stop


class Rows:
    def __init__(self):
        self.rows: list[dict] = []

    def write(self, row: dict, bad_files: list) -> None:
        self.rows.append(row)


class StopAt:
    """A stand-in for PreemptionSignals: a signal "arrives" at one step."""

    def __init__(self, step: int):
        self.step = step

    def requested(self, step: int) -> bool:
        return step >= self.step


def _job(seed: int = 0, n_batches: int = 12) -> Job:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    g = torch.Generator().manual_seed(1)
    batches = [{"images": torch.randn(2, 3, generator=g), "num_bad": 0} for _ in range(n_batches)]

    def loss_fn(net: nn.Module, batch: dict) -> torch.Tensor:
        return net(batch["images"]).pow(2).mean()

    opt = build_optimizer(model, 1e-2, 0.0)
    return Job(model=model, loss_fn=loss_fn, optimizer=opt, scheduler=build_scheduler(opt, 6, 1, 1e-4, 1e-4),
               loader=batches, sampler=None, steps_per_epoch=6, total_steps=6)  # fmt: skip


def _weights(job: Job) -> list[torch.Tensor]:
    return [p.detach().clone() for p in job.model.parameters()]


def test_stopping_and_continuing_is_the_same_as_one_call():
    opts = LoopOptions(device=torch.device("cpu"), accum_steps=2, log_every=2, clip_grad=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    whole = _job()
    assert train_one_epoch(whole, scaler, opts, 0, LoopStats(), Rows()) == 6
    parts, log = _job(), Rows()
    batches = iter(parts.loader)
    stats = LoopStats()
    assert train_steps(parts, batches, scaler, opts, 0, 0, 1, stats, log) == (1, False)  # a checkpoint at step 1
    assert train_steps(parts, batches, scaler, opts, 0, 1, 6, stats, log) == (6, False)
    for a, b in zip(_weights(whole), _weights(parts)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["step"] for r in log.rows] == [1, 2, 4, 6]  # every log_every steps and at each stop
    assert stats.seen_images == 24 and stats.pending == []


def test_a_signal_stops_after_the_step_it_arrives_in_and_logs_it():
    opts = LoopOptions(device=torch.device("cpu"), accum_steps=1, log_every=100, signals=StopAt(3))
    job, log = _job(), Rows()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    assert train_steps(job, iter(job.loader), scaler, opts, 0, 0, 6, LoopStats(), log) == (3, True)
    assert [r["step"] for r in log.rows] == [3]  # the losses are read back (checked) before the checkpoint


def test_the_end_of_the_batches_stops_early():
    opts = LoopOptions(device=torch.device("cpu"), accum_steps=2)
    job = _job(n_batches=5)  # two whole steps and half of a third
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    assert train_steps(job, iter(job.loader), scaler, opts, 0, 0, 6, LoopStats(), Rows()) == (2, False)


def test_fit_stops_at_every_checkpoint_and_at_the_epoch_end():
    assert [_next_stop(s, 10, 4) for s in (0, 3, 4, 8, 9)] == [4, 4, 8, 10, 10]
    assert _next_stop(3, 10, 0) == 10  # train.checkpoint_every=0: only at epoch ends
    assert _next_stop(12, 20, 5) == 15
