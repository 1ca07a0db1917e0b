"""An action detector on a video encoder: the box head of the official MViT AVA model.

The encoder's final-norm tokens (class token dropped) are laid back on the output grid of the input clip
``(C, T', H', W')``, averaged over time, and each person box is pooled from that map with RoIAlign (``aligned=True``:
continuous coordinates, half-pixel centres), max-pooled over its ``roi_size x roi_size`` bins, passed through dropout
and a linear layer: one logit per action (multi-label: a sigmoid each, trained with binary cross-entropy). The grid
is the clip's size divided by the encoder's strides, so any clip whose sides are multiples of them works: the
square crops of training and the padded whole-frame clips of ``detect.eval_view=full`` alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import roi_align

__all__ = ["ActionDetector"]


def _prefixed(regex: str, prefix: str = "encoder") -> str:
    """An encoder's parameter-name regex (alternatives each anchored with ``^``) for the wrapped model's names."""
    parts = [p.lstrip("^") for p in regex.split("|") if p]
    return rf"^{prefix}\.(?:{'|'.join(parts)})"


class ActionDetector(nn.Module):
    """A video encoder with a RoI head.

    Args:
        encoder: any maskfeat video encoder without classifier (``forward_features`` returns the final-norm tokens,
            ``num_prefix_tokens`` first; ``output_grid`` (T', H', W') at ``clip_size`` (T, H, W): their ratios are
            the encoder's strides).
        num_classes: actions (outputs per box).
        roi_size: RoIAlign output side (the official ``ROI_XFORM_RESOLUTION``, 7).
        dropout: before the linear layer (the official ``MODEL.DROPOUT_RATE``).

    ``forward(x, boxes)``: clips ``x`` (B, 3, T, H, W) of any sides that are multiples of the encoder's ``strides``
    and ``boxes`` (K, 5) rows ``(batch index, x1, y1, x2, y2)`` in pixels of the clip -> logits (K, num_classes).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, roi_size: int = 7, dropout: float = 0.5) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.roi_size = int(roi_size)
        self.num_features = encoder.num_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(encoder.num_features, num_classes)
        # input frames / pixels per output token along (T, H, W): (2, 16, 16) for the ViT, (2, 32, 32) for the MViT
        self.strides = tuple(int(c) // int(o) for c, o in zip(encoder.clip_size, encoder.output_grid))
        self.stride = encoder.clip_size[1] / encoder.output_grid[1]  # input pixels per feature-map cell (16 or 32)

    def token_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """The token grid (T', H', W') of clips ``x`` (B, 3, T, H, W): each side divided by the encoder's stride."""
        t, h, w = (int(n) // s for n, s in zip(x.shape[2:], self.strides))
        return t, h, w

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's last feature map averaged over time: (B, C, H', W')."""
        tokens = self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens :]  # (B, T'H'W', C)
        t, h, w = self.token_grid(x)
        if tokens.shape[1] != t * h * w:
            raise ValueError(f"the encoder gave {tokens.shape[1]} tokens for clips of {tuple(x.shape[2:])} (T, H, W), "
                             f"not the {t}x{h}x{w} grid of its strides {self.strides}: clip sides must be multiples "
                             "of them")  # fmt: skip
        fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, t, h, w)  # (B, C, T', H', W')
        return fmap.mean(dim=2)

    def pool(self, fmap: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """One feature vector per box: RoIAlign on ``fmap`` (B, C, H', W'), then the max over its bins: (K, C)."""
        scale = 1.0 / self.stride
        rois = roi_align(
            fmap, boxes.to(fmap.dtype), self.roi_size, scale, sampling_ratio=0, aligned=True
        )  # (K, C, r, r)
        return rois.amax(dim=(2, 3))

    def forward(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pool(self.feature_map(x), boxes)))

    # timm's hooks, for the optimizer's parameter groups: the encoder's names under ``encoder.``, the head last
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        inner = self.encoder.group_matcher(coarse)
        blocks = [(_prefixed(regex), group) for regex, group in inner["blocks"]]
        return {"stem": _prefixed(inner["stem"]), "blocks": [*blocks, (r"^head", (99999,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
