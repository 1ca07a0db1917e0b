"""The MaskFeat wrapper: a timm ViT whose masked patch embeddings are replaced by a learned [MASK] token,
followed by a linear head that regresses the target features (HOG) of the masked patches.

Wei et al., "Masked Feature Prediction for Self-Supervised Visual Pre-Training", CVPR 2022 (arXiv 2112.09133).
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models._manipulate import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import nn


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


class MaskFeat(nn.Module):
    """MaskFeat pre-training model around a timm :class:`VisionTransformer`.

    ``forward(imgs, mask)`` returns ``(loss, pred, target)``:
    imgs (B, C, H, W) normalised; mask (B, h, w) or (B, N) bool with True = masked;
    pred and target (B, N, target.dim); loss the masked MSE.
    """

    def __init__(self, encoder: VisionTransformer, target: nn.Module):
        super().__init__()
        if getattr(encoder, "dynamic_img_size", False):
            raise ValueError("MaskFeat expects a ViT built with dynamic_img_size=False")
        self.encoder = encoder
        self.target = target  # buffers only: no parameters, not part of the encoder
        dim = encoder.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.head = nn.Linear(dim, target.dim)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (besides every 1-D parameter)."""
        return {"mask_token"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def forward_features(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode the masked image. Returns the final-norm patch tokens (B, N, D), prefix tokens dropped."""
        enc = self.encoder
        x = enc.patch_embed(imgs)  # (B, N, D)
        w = mask.reshape(x.shape[0], -1, 1).to(x.dtype)  # (B, N, 1)
        x = x * (1.0 - w) + self.mask_token.to(x.dtype) * w  # [MASK] replaces masked embeddings...
        x = enc._pos_embed(x)  # ...before the position embeddings; the class token is prepended here
        x = enc.patch_drop(x)
        x = enc.norm_pre(x)
        if enc.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(enc.blocks, x)
        else:
            x = enc.blocks(x)
        x = enc.norm(x)
        return x[:, enc.num_prefix_tokens :]

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self.head(self.forward_features(imgs, mask))  # (B, N, D_target)
        target = self.target(imgs)  # (B, N, D_target), float32, no grad
        mask = mask.reshape(mask.shape[0], -1)
        return masked_mse(pred, target, mask), pred, target
