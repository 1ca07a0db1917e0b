"""The MaskFeat model, one for images and video: an encoder whose masked patch embeddings are replaced by a
learned [MASK] token, followed by a linear head that regresses the target features (HOG) of the masked patches.

Wei et al., "Masked Feature Prediction for Self-Supervised Visual Pre-Training", CVPR 2022 (arXiv 2112.09133):
images are masked 16x16 patches; video, 2x16x16 space-time patches, whose target is the HOG of one of its frames.
An image is a clip of one frame: every encoder (:mod:`maskfeat.models.registry`) gives its grids as (T, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import trunc_normal_
from torch import nn

from maskfeat.masking import upsample_mask

__all__ = ["MaskFeat", "mask_factors", "masked_mse", "mean_target_mse", "target_patch_size"]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked tokens only.

    Args:
        pred: (B, N, D) predictions (any float dtype; computed in float32).
        target: (B, N, D) targets.
        mask: (B, N) bool, True = masked.
    Returns:
        Scalar: sum over masked tokens of mean_D (pred - target)^2, divided by the number of masked tokens.
    """
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, N)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


@torch.no_grad()
def mean_target_mse(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked MSE of the best constant predictor: every masked token predicted by the mean target vector of
    the batch's masked tokens. A model that has learned nothing from the visible context scores this; the
    pre-training loss is read against it.

    Args:
        target: (B, N, D) targets.
        mask: (B, N) bool, True = masked.
    Returns:
        Scalar (float32, no gradient): the per-dimension (population) variance of the masked targets, averaged
        over the D dimensions; 0 when nothing is masked.
    """
    t = target.detach().float().reshape(-1, target.shape[-1])  # (B*N, D)
    m = mask.reshape(-1).to(t.dtype)[:, None]  # (B*N, 1)
    count = m.sum().clamp(min=1.0)
    mean = (t * m).sum(0) / count  # (D,)
    return (((t - mean) ** 2) * m).sum() / (count * t.shape[-1])


def mask_factors(coarse: Sequence[int], fine: Sequence[int]) -> tuple[int, ...]:
    """How many cells of the grid ``fine`` each cell of ``coarse`` covers, per dimension.

    Raises:
        ValueError: ``fine`` is not a whole multiple of ``coarse`` in every dimension.
    """
    coarse, fine = tuple(coarse), tuple(fine)
    if len(coarse) != len(fine) or any(c < 1 or f % c for c, f in zip(coarse, fine)):
        raise ValueError(f"cannot upsample a {coarse} mask to the grid {fine}")
    return tuple(f // c for c, f in zip(coarse, fine))


def target_patch_size(encoder: nn.Module) -> tuple[int, int, int]:
    """The (frames, height, width) of input each output token of ``encoder`` stands for: the patch size of the
    target it predicts (images: (1, p, p); video ViT: its tubelet; MViT at stride 16: (2, 16, 16))."""
    t, h, w = (c // o for c, o in zip(encoder.clip_size, encoder.output_grid))
    return t, h, w


class MaskFeat(nn.Module):
    """MaskFeat pre-training model around any encoder of :mod:`maskfeat.models.registry`.

    ``forward(x, mask)`` returns ``(loss, pred, target)``: x (B, C, H, W) images or (B, C, T, H, W) clips,
    normalised; mask bool on the encoder's OUTPUT token grid, (B, *output_grid), (B, h, w) for images, or
    (B, N_out), True = masked; pred and target (B, N_out, target.dim); loss the masked MSE. Where the encoder's
    patch grid is finer than its output grid (MViT: patch embedding at T/2 x H/4 x W/4, output at
    T/2 x H/16 x W/16), the mask is upsampled to it before the encoder sees it, so every masked output token covers
    a fully masked block of patches. The grids are those of the input size the encoder was built for.

    Args:
        encoder: An encoder with the interface of :mod:`maskfeat.models.registry` (for MViT, the pre-training
            variant, for an output at stride 16).
        target: A module mapping x to (B, N_out, target.dim) (``targets.build_target`` with the patch size
            :func:`target_patch_size` of the encoder); buffers only.
    """

    def __init__(self, encoder: nn.Module, target: nn.Module) -> None:
        super().__init__()
        if getattr(encoder, "dynamic_img_size", False):
            raise ValueError("MaskFeat expects a ViT built with dynamic_img_size=False")
        self.encoder = encoder
        self.target = target  # buffers only: no parameters, not part of the encoder
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        self.head = nn.Linear(encoder.num_features, target.dim)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.mask_factors = mask_factors(self.output_grid, encoder.patch_grid)

    @property
    def output_grid(self) -> tuple[int, int, int]:
        """The token grid (T', h, w) the mask and the predictions live on (T' = 1 for images)."""
        return tuple(self.encoder.output_grid)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (besides every 1-D parameter); fnmatch patterns allowed."""
        return {"mask_token"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encodes the masked input. Returns the final-norm output tokens (B, N_out, num_features), prefix dropped."""
        mask = mask.reshape(mask.shape[0], *self.output_grid)
        # The encoder masks its patch embeddings: bring the mask to that (possibly finer) grid.
        mask = upsample_mask(mask, self.mask_factors)
        return self.encoder.forward_features(x, mask, self.mask_token)[:, self.encoder.num_prefix_tokens :]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self.head(self.forward_features(x, mask))  # (B, N_out, D_target)
        target = self.target(x)  # (B, N_out, D_target), float32, no grad
        if target.shape != pred.shape:
            raise ValueError(
                f"the target has shape {tuple(target.shape)} but the predictions {tuple(pred.shape)}: the target's "
                f"patches must match the encoder's output grid {self.output_grid}"
            )
        return masked_mse(pred, target, mask.reshape(mask.shape[0], -1)), pred, target
