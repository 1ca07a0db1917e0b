"""MaskFeat on video: a video encoder (VideoViT or MViTv2) whose masked patch embeddings are replaced by a learned
[MASK] token, and a linear head regressing the HOG features of the masked space-time patches.

Wei et al., "Masked Feature Prediction for Self-Supervised Visual Pre-Training", CVPR 2022 (arXiv 2112.09133):
the target of a 2x16x16 space-time patch is the HOG of one of its frames (108 numbers for RGB, 9 bins, 8x8 cells).
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from maskfeat.models.maskfeat import masked_mse
from maskfeat.models.mvit import MViTEncoder
from maskfeat.models.video_vit import VideoViT
from maskfeat.targets import HOGTarget

__all__ = ["VideoHOGTarget", "VideoMaskFeat", "upsample_token_mask"]


VideoHOGTarget = HOGTarget  # the one HOG target: (B, C, T, H, W) in, (B, (T/2)(H/16)(W/16), 108) out


def upsample_token_mask(mask: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Nearest upsampling of a token mask (B, *coarse) to (B, *grid), each coarse cell covering a block of cells.

    Args:
        mask: bool (B, t, h, w).
        grid: (T, H, W), each a whole multiple of the corresponding coarse size.

    Returns:
        bool (B, T, H, W).
    """
    coarse = tuple(mask.shape[1:])
    if len(coarse) != len(grid) or any(g % c for g, c in zip(grid, coarse)):
        raise ValueError(f"cannot upsample a {coarse} mask to the grid {tuple(grid)}")
    for dim, (g, c) in enumerate(zip(grid, coarse), start=1):
        if g != c:
            mask = mask.repeat_interleave(g // c, dim=dim)
    return mask


class VideoMaskFeat(nn.Module):
    """MaskFeat pre-training model around a video encoder.

    ``forward(videos, mask)`` returns ``(loss, pred, target)``: videos (B, C, T, H, W) normalised; mask bool on the
    encoder's OUTPUT token grid, (B, T', h, w) or (B, N_out), True = masked; pred and target (B, N_out, target.dim);
    loss the masked MSE. Where the encoder's input token grid is finer than its output grid (MViT: patch embedding
    at T/2 x H/4 x W/4, output at T/2 x H/16 x W/16), the mask is upsampled to it before the encoder sees it, so
    every masked output token covers a fully masked block of input patches. The grids are those of the clip size
    the encoder was built for (``encoder.patch_grid`` / ``encoder.output_grid``), so clips must have that size.

    Args:
        encoder: A :class:`VideoViT` or :class:`MViTEncoder` (the pre-training variant, for an output at stride 16).
            Needs ``embed_dim`` (patch-embedding width), ``num_features`` (output width), ``patch_grid``,
            ``output_grid`` and ``forward_features(x, mask, mask_token)``.
        target: A module mapping (B, C, T, H, W) to (B, N_out, target.dim), e.g. :class:`VideoHOGTarget`.
    """

    def __init__(self, encoder: VideoViT | MViTEncoder, target: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.target = target  # buffers only: no parameters, not part of the encoder
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        self.head = nn.Linear(encoder.num_features, target.dim)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def output_grid(self) -> tuple[int, int, int]:
        """The token grid (T', h, w) the mask and the predictions live on."""
        return tuple(self.encoder.output_grid)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (besides every 1-D parameter); fnmatch patterns allowed."""
        return {"mask_token"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def forward_features(self, videos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encodes the masked clip. Returns the final-norm output tokens (B, N_out, num_features)."""
        mask = mask.reshape(mask.shape[0], *self.output_grid)
        # The encoder masks its patch embeddings: bring the mask to that (possibly finer) grid.
        mask = upsample_token_mask(mask, tuple(self.encoder.patch_grid))
        return self.encoder.forward_features(videos, mask, self.mask_token)

    def forward(self, videos: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self.head(self.forward_features(videos, mask))  # (B, N_out, D_target)
        target = self.target(videos)  # (B, N_out, D_target), float32, no grad
        if target.shape != pred.shape:
            raise ValueError(
                f"the target has shape {tuple(target.shape)} but the predictions {tuple(pred.shape)}: the target's "
                f"patches must match the encoder's output grid {self.output_grid}"
            )
        return masked_mse(pred, target, mask.reshape(mask.shape[0], -1)), pred, target
