"""Optimizer and learning-rate schedule, from timm's own pieces.

- AdamW with parameter groups from timm: no weight decay on 1-D parameters (norms, biases) nor on the names in
  ``model.no_weight_decay()`` (position embeddings, class and mask tokens); optional layer-wise lr decay.
- A per-step cosine schedule with a linear warm-up (timm ``CosineLRScheduler`` stepped in optimizer updates).
"""

from __future__ import annotations

import logging

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn


def scaled_lr(lr: float | None, blr: float, total_batch: int) -> float:
    """The peak learning rate: ``lr`` when given, else the linear scaling rule ``blr * total_batch / 256``."""
    return float(lr) if lr is not None else blr * total_batch / 256


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    layer_decay: float | None = None,
    opt: str = "adamw",
) -> torch.optim.Optimizer:
    """``opt`` (adamw, fused on CUDA; lars or sgd with momentum 0.9) over timm's weight-decay parameter groups,
    with layer-wise lr decay when ``layer_decay`` is set."""
    if opt == "adamw":
        kwargs = {"betas": tuple(betas)}
        if next(model.parameters()).is_cuda:
            kwargs["fused"] = True
    else:
        kwargs = {"momentum": 0.9}
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float, warmup_lr: float
) -> CosineLRScheduler:
    """Linear warm-up from ``warmup_lr`` over ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``.

    Call ``scheduler.step_update(step)`` before each optimizer step (``step`` counts optimizer updates from 0).
    """
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    # timm warns that a one-step cosine "has no effect" (short smoke-test runs): not worth a message here
    logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps - warmup_steps, 1),
        lr_min=min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )
