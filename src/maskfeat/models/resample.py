"""Position parameters of a state dict resampled to a model of another image or clip size.

The weights that depend on the input size are the position ones: a ViT's ``pos_embed`` (1, prefix + h*w, D), a
video ViT's ``pos_embed_spatial`` (1, h*w, D) and ``pos_embed_temporal`` (1, t, D), and MViTv2's relative position
tables ``rel_pos_h`` / ``rel_pos_w`` / ``rel_pos_t`` (2 * size - 1, head dim). Everything else keeps its shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

__all__ = ["REL_POS_NAMES", "resample_positions", "resize_rel_pos"]

REL_POS_NAMES = ("rel_pos_h", "rel_pos_w", "rel_pos_t")


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resampling of a relative position table (L, C) -> (length, C), as torchvision does at run time."""
    t = table.detach().float().t()[None]  # (1, C, L)
    return F.interpolate(t, size=length, mode="linear", align_corners=False)[0].t().to(table.dtype)


def _square(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot resample {n} position embeddings: not a square grid")
    return side, side


def _resample(name: str, value: torch.Tensor, want: torch.Size, encoder: nn.Module) -> torch.Tensor | None:
    """``value`` resampled to ``want``, or None when ``name`` is not a position parameter of a known layout."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in REL_POS_NAMES and value.ndim == 2 and value.shape[1] == want[1]:
        return resize_rel_pos(value, want[0])
    if leaf == "pos_embed" and value.ndim == 3 and hasattr(encoder, "patch_embed"):  # timm ViT, prefix tokens first
        prefix = 0 if getattr(encoder, "no_embed_class", False) else encoder.num_prefix_tokens
        return resample_abs_pos_embed(value, list(encoder.patch_embed.grid_size), num_prefix_tokens=prefix)
    if leaf == "pos_embed_spatial" and value.ndim == 3:  # (1, h*w, D), square grids
        old, new = _square(value.shape[1]), _square(want[1])
        grid = value.reshape(1, *old, -1).permute(0, 3, 1, 2).float()
        out = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
        return out.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], -1).to(value.dtype)
    if leaf == "pos_embed_temporal" and value.ndim == 3:  # (1, t, D)
        out = F.interpolate(value.transpose(1, 2).float(), size=want[1], mode="linear", align_corners=False)
        return out.transpose(1, 2).to(value.dtype)
    return None


def resample_positions(encoder: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` (the encoder's own keys) with every position parameter whose shape differs from ``encoder``'s
    resampled to it: bicubic over the patch grid (absolute embeddings), linear along time and along relative
    position tables. Returns the new state and the names resampled; other mismatches are left for the load to
    report."""
    own = encoder.state_dict()
    out, resized = dict(state), []
    for name, value in state.items():
        if name not in own or own[name].shape == value.shape:
            continue
        new = _resample(name, value, own[name].shape, encoder)
        if new is not None and new.shape == own[name].shape:
            out[name] = new
            resized.append(name)
    return out, resized
