"""Pieces the encoders share: size pairs, the [MASK] token substitution, timm's training hooks and their timm
registration."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.layers import to_2tuple
from timm.models import load_pretrained, register_model
from torch import nn

__all__ = ["TimmHooks", "apply_token_mask", "pair", "register_sizes"]


class TimmHooks:
    """timm's hooks of the video encoders: layer grouping for layer-wise lr decay (``STEM``: the embedding
    parameters, first; one layer per ``blocks.N``; ``LAST``: the final norm and head), gradient checkpointing (the
    encoder reads ``self.grad_checkpointing``) and the classifier (``self.head``)."""

    STEM = ""  # regex of the embedding parameters' names
    LAST = r"^norm"  # regex of the parameters grouped after the last block

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": self.STEM, "blocks": [(r"^blocks\.(\d+)", None), (self.LAST, (99999,))]}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head


def pair(x: int | Sequence[int]) -> tuple[int, int]:
    """``(x, x)`` for an int, ``(x[0], x[1])`` for a pair (timm's ``to_2tuple``), as ints."""
    h, w = to_2tuple(x)
    return int(h), int(w)


def apply_token_mask(x: torch.Tensor, mask: torch.Tensor | None, mask_token: torch.Tensor | None) -> torch.Tensor:
    """Replaces the masked tokens of ``x`` by ``mask_token``.

    Args:
        x: (B, N, D) token embeddings.
        mask: None (nothing masked), or bool (B, N) or (B, *grid) with prod(grid) == N; True = masked.
        mask_token: (D,), (1, D) or (1, 1, D); required when ``mask`` is given.

    Returns:
        (B, N, D), the masked positions holding the mask token (which receives their gradient).
    """
    if mask is None:
        return x
    if mask_token is None:
        raise ValueError("a mask was given without a mask_token to put in the masked positions")
    B, N, D = x.shape
    mask = mask.reshape(B, -1)
    if mask.shape[1] != N:
        raise ValueError(f"the mask has {mask.shape[1]} positions per sample but the token grid has {N}")
    return torch.where(mask.to(torch.bool)[..., None], mask_token.reshape(1, 1, D).to(x.dtype), x)


def register_sizes(cls: type[nn.Module], sizes: dict[str, dict[str, Any]], module: str) -> None:
    """Registers one timm entrypoint per size, so ``timm.create_model(name, **kwargs)`` builds
    ``cls(**{**sizes[name], **kwargs})``; each entrypoint also becomes the attribute ``name`` of ``module``.

    timm passes its factory options (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``) to every
    entrypoint; they become the model's ``pretrained_cfg`` (e.g. the ``pretrained_cfg`` of an encoder.json as the
    overlay). Ours have no weights of their own: ``pretrained=True`` loads those of a ``maskfeat export --hub``
    folder, ``timm.create_model("local-dir:FOLDER", pretrained=True)``.
    """
    for name, size in sizes.items():
        entrypoint = _entrypoint(cls, name, size)
        entrypoint.__module__ = module
        setattr(sys.modules[module], name, entrypoint)
        register_model(entrypoint)


def _entrypoint(cls: type[nn.Module], name: str, size: dict[str, Any]) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        cfg = kwargs.pop("pretrained_cfg", None)
        cache_dir = kwargs.pop("cache_dir", None)
        kwargs.pop("pretrained_model_args", None)  # timm's record of a folder's model_args: already in kwargs
        cfg = dict(cfg) if isinstance(cfg, dict) else {}
        if pretrained and cfg.get("source") not in ("local-dir", "hf-hub"):
            raise ValueError(f"maskfeat's {name} has no downloadable weights: load an encoder.safetensors, or a "
                             "folder of maskfeat export --hub with timm.create_model('local-dir:FOLDER')")  # fmt: skip
        overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
        model = cls(**{**size, **kwargs})
        model.pretrained_cfg = {**cfg, "architecture": name, **overlay}
        if pretrained:  # the folder's (or Hub repository's) model.safetensors, by timm's own loader
            load_pretrained(model, model.pretrained_cfg, num_classes=model.num_classes, strict=True,
                            cache_dir=cache_dir)  # fmt: skip
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"``{cls.__name__}`` {name} ({size}) for ``timm.create_model``; keyword arguments override."
    return entrypoint
