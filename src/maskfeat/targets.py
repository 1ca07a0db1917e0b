"""Regression targets behind one interface: a module mapping images to per-patch feature vectors.

``target(x)`` takes the normalised images the model sees, ``(B, C, H, W)``, and returns float32
``(B, N, target.dim)`` with N patches in row-major order, computed without gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from maskfeat.hog import HOG, hog_patch_targets


class HOGTarget(nn.Module):
    """Per-patch HOG features (MaskFeat's target): C * nbins * (patch // cell)^2 numbers a patch (108 for RGB/16/8).

    Images (B, C, H, W) -> (B, (H/p)(W/p), dim); videos (B, C, T, H, W) -> (B, (T/tp)(H/p)(W/p), dim), each
    2-frame patch taking the HOG of its frame ``frame_index`` (0 = the first, as the official code).
    """

    def __init__(
        self,
        patch_size: int = 16,
        in_chans: int = 3,
        nbins: int = 9,
        cell_size: int = 8,
        gaussian_window: int = 0,
        temporal_patch: int = 2,
        frame_index: int = 0,
    ) -> None:
        super().__init__()
        self.patch_size, self.nbins, self.cell_size = patch_size, nbins, cell_size
        self.temporal_patch, self.frame_index = temporal_patch, frame_index
        self.hog = HOG(nbins=nbins, cell_size=cell_size, gaussian_window=gaussian_window)
        self.dim = in_chans * nbins * (patch_size // cell_size) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hog_patch_targets(
            x,
            patch_size=self.patch_size,
            nbins=self.nbins,
            cell_size=self.cell_size,
            gaussian_window=self.hog.gaussian_window,
            temporal_patch=self.temporal_patch,
            frame_index=self.frame_index,
            hog=self.hog,
        )


class PixelTarget(nn.Module):
    """Per-patch pixels, ``(p, p, C)`` flattened as MAE's ``patchify``; optionally normalised per patch (norm_pix).

    Videos (B, C, T, H, W): each space-time patch of ``temporal_patch`` x p x p pixels, flattened ``(tp, p, p, C)``
    as VideoMAE does, tokens in (t, h, w) row-major order: ``dim = temporal_patch * p * p * C`` (1536 for 2x16x16 RGB).
    """

    def __init__(self, patch_size: int, in_chans: int = 3, norm_pix: bool = True, temporal_patch: int = 1):
        super().__init__()
        self.patch_size, self.norm_pix, self.temporal_patch = patch_size, norm_pix, temporal_patch
        self.dim = in_chans * patch_size**2 * temporal_patch

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, tp = self.patch_size, self.temporal_patch
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if x.dim() == 4:
                x = x.unsqueeze(2)  # an image: a one-frame video
                tp = 1
            b, c, t, h, w = x.shape
            x = x.reshape(b, c, t // tp, tp, h // p, p, w // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
            x = x.reshape(b, (t // tp) * (h // p) * (w // p), -1)
            if self.norm_pix:
                mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)
                x = (x - mean) / (var + 1e-6).sqrt()
        return x


def build_target(
    name: str,
    patch_size: int,
    in_chans: int = 3,
    nbins: int = 9,
    cell_size: int = 8,
    gaussian_window: int = 0,
    norm_pix: bool = True,
    temporal_patch: int = 1,
    frame_index: int = 0,
) -> nn.Module:
    """The target module called ``name`` (``hog`` or ``pixel``); ``temporal_patch`` > 1 for video models (HOG of
    frame ``frame_index`` of each temporal patch; pixels of the whole space-time patch)."""
    if name == "hog":
        return HOGTarget(patch_size, in_chans, nbins=nbins, cell_size=cell_size, gaussian_window=gaussian_window,
                         temporal_patch=max(temporal_patch, 1), frame_index=frame_index)  # fmt: skip
    if name == "pixel":
        return PixelTarget(patch_size, in_chans, norm_pix=norm_pix, temporal_patch=temporal_patch)
    raise ValueError(f"unknown target '{name}' (hog, pixel)")
