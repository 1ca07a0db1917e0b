"""A video Vision Transformer: 2x16x16 tubelet embedding, space-time position embeddings, timm blocks.

The encoder MaskFeat pre-trains on video (Wei et al., CVPR 2022, Sec. 4: "ViT ... with 2x16x16 cube embedding").
A clip ``(B, C, T, H, W)`` becomes ``T' * H' * W'`` tokens (``T' = T / 2``, ``H' = H / 16``, ``W' = W / 16``),
ordered ``(t, h, w)`` -- the order of :func:`maskfeat.hog.hog_patch_targets` on videos.

Position embeddings are *separable*, as SlowFast's video ViT option ``SEP_POS_EMBED``: a learned spatial table
``(H' * W', D)`` plus a learned temporal table ``(T', D)`` (plus one for the class token). They cost ``H'W' + T'``
rows instead of ``T'H'W'``, and each part can be resampled on its own when a model is fine-tuned with another
number of frames or another resolution.

The sizes ``vit_s``, ``vit_b``, ``vit_l`` are registered in timm's registry (``timm.create_model("vit_b",
**video_vit_args("vit_b"))``); timm has no model of these names. ``maskfeat.models.registry.create_encoder`` builds
them with the image and MViT encoders from the JSON-able arguments a checkpoint stores next to the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block
from torch import nn

from maskfeat.models.layers import TimmHooks, apply_token_mask, pair, register_sizes

__all__ = ["VIDEO_VIT_SIZES", "VideoViT", "video_vit_args"]  # + the entrypoints vit_s, vit_b, vit_l

# Width, depth and heads of the ViT sizes (Dosovitskiy et al. 2021; S as in DeiT).
VIDEO_VIT_SIZES: dict[str, dict[str, int]] = {
    "vit_s": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


class VideoViT(TimmHooks, nn.Module):
    """A ViT over space-time tubelets, built from timm's :class:`~timm.models.vision_transformer.Block`.

    Layout (names are those of the ``state_dict``): ``patch_embed`` (Conv3d, kernel = stride = tubelet),
    ``cls_token`` (optional), ``pos_embed_spatial`` (1, H'W', D), ``pos_embed_temporal`` (1, T', D),
    ``pos_embed_class`` (1, 1, D; only with a class token), ``blocks``, ``norm`` (the final norm), ``head``.

    Classification (``forward``) pools the final-norm tokens: ``'avg'`` = mean of the patch tokens,
    ``'token'`` = the class token; then dropout and the linear ``head`` (Identity when ``num_classes == 0``).

    Args:
        img_size: Frame size (int or (H, W)) the position embeddings are made for.
        num_frames: Clip length T the temporal embeddings are made for.
        tubelet: (t, p, p) size of a tubelet, 2x16x16 by default.
        in_chans: Input channels.
        embed_dim: Token width D.
        depth: Number of transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: Hidden width of the MLPs relative to D.
        qkv_bias: Bias in the qkv projection.
        drop_path_rate: Stochastic depth of the last block (linear in depth from 0).
        num_classes: Classifier outputs; 0 = no classifier (``forward`` returns pooled features).
        global_pool: ``'avg'`` or ``'token'`` (needs ``class_token``).
        class_token: Prepend a learned class token.
        head_drop: Dropout before the classifier.
    """

    STEM = r"^cls_token|^pos_embed|^patch_embed"  # timm's layer grouping: the embeddings first, norm / head last

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        num_frames: int = 16,
        tubelet: Sequence[int] = (2, 16, 16),
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        num_classes: int = 0,
        global_pool: str = "avg",
        class_token: bool = True,
        head_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", "token"):
            raise ValueError(f"global_pool must be 'avg' or 'token', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        H, W = pair(img_size)
        tubelet = tuple(int(t) for t in tubelet)
        if len(tubelet) != 3 or num_frames % tubelet[0] or H % tubelet[1] or W % tubelet[2]:
            raise ValueError(f"clip {num_frames}x{H}x{W} is not a whole number of {tubelet} tubelets")
        self.img_size, self.num_frames, self.tubelet = (H, W), int(num_frames), tubelet
        self.in_chans = in_chans
        self.embed_dim = self.num_features = embed_dim
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_prefix_tokens = 1 if class_token else 0
        self.grad_checkpointing = False
        # Token grid (T', H', W') of the default clip; the output keeps the input grid (no pooling).
        self.patch_grid = (num_frames // tubelet[0], H // tubelet[1], W // tubelet[2])
        self.output_grid = self.patch_grid
        self.clip_size = (int(num_frames), H, W)  # the input (T, H, W) the model is built for

        self.patch_embed = nn.Conv3d(in_chans, embed_dim, kernel_size=tubelet, stride=tubelet)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        t, h, w = self.patch_grid
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, embed_dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
        self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None

        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear in depth, as timm
        block = partial(Block, embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer)
        self.blocks = nn.Sequential(*[block(drop_path=dpr[i]) for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ViT init for the linear layers; the tubelet projection initialised as the linear map it is
        # (xavier on the flattened kernel, as MAE); small random tables for the tokens and position embeddings.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for p in (self.cls_token, self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class):
            if p is not None:
                trunc_normal_(p, std=0.02)

    # ---------------------------------------------------------------------------------------------------------
    # timm-style model interface
    # ---------------------------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names trained without weight decay (besides every 1-D parameter)."""
        return {"cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"}

    def token_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """The token grid (T', H', W') of a clip ``x`` (B, C, T, H, W)."""
        T, H, W = x.shape[-3:]
        return T // self.tubelet[0], H // self.tubelet[1], W // self.tubelet[2]

    def _pos_embed(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """Space-time position embeddings (1, T'H'W', D) for ``grid``, ordered (t, h, w).

        The tables are resampled (linear in time, bicubic in space) when ``grid`` is not the one they were made for.
        """
        t, h, w = grid
        t0, h0, w0 = self.patch_grid
        D = self.embed_dim
        spatial, temporal = self.pos_embed_spatial, self.pos_embed_temporal
        if (h, w) != (h0, w0):
            spatial = spatial.reshape(1, h0, w0, D).permute(0, 3, 1, 2)
            spatial = F.interpolate(spatial, size=(h, w), mode="bicubic", align_corners=False)
            spatial = spatial.permute(0, 2, 3, 1).reshape(1, h * w, D)
        if t != t0:
            temporal = F.interpolate(temporal.transpose(1, 2), size=t, mode="linear", align_corners=False)
            temporal = temporal.transpose(1, 2)
        return (temporal[:, :, None, :] + spatial[:, None, :, :]).reshape(1, t * h * w, D)

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encodes a clip; returns every token after the final norm, the class token first (if any), as timm.

        Args:
            x: (B, C, T, H, W) clip.
            mask: None or bool (B, T', H', W') / (B, T'H'W') on the token grid, True = masked.
            mask_token: (D,) / (1, 1, D) embedding put in the masked positions.

        Returns:
            (B, num_prefix_tokens + T'H'W', D).
        """
        grid = self.token_grid(x)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), tokens ordered (t, h, w)
        # [MASK] replaces the masked embeddings before the position embeddings, so a masked token still knows
        # where it is but nothing of what was there.
        x = apply_token_mask(x, mask, mask_token)
        x = x + self._pos_embed(grid).to(x.dtype)
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed_class).to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat((cls, x), dim=1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pools the output of :meth:`forward_features` (B, prefix + N, D) and classifies: (B, num_classes)."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifies a clip (B, C, T, H, W) -> (B, num_classes) (pooled features (B, D) when num_classes == 0)."""
        return self.forward_head(self.forward_features(x))


# -------------------------------------------------------------------------------------------------------------------
# JSON-able architecture arguments, and the timm entrypoints
# -------------------------------------------------------------------------------------------------------------------


def video_vit_args(
    size: str = "vit_b",
    img_size: int | Sequence[int] = 224,
    num_frames: int = 16,
    tubelet: Sequence[int] = (2, 16, 16),
    in_chans: int = 3,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    global_pool: str = "avg",
    class_token: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """The complete, JSON-able architecture arguments of a :class:`VideoViT` of ``size`` (see VIDEO_VIT_SIZES).

    ``overrides`` may change ``embed_dim``, ``depth`` or ``num_heads`` (tiny test models, other widths).
    Training settings (drop path, head dropout, classes) are not architecture and stay out.
    """
    if size not in VIDEO_VIT_SIZES:
        raise ValueError(f"unknown video ViT size '{size}'; choose one of {', '.join(VIDEO_VIT_SIZES)}")
    unknown = set(overrides) - {"embed_dim", "depth", "num_heads"}
    if unknown:
        raise ValueError(f"unknown video ViT arguments: {sorted(unknown)}")
    args: dict[str, Any] = {
        "img_size": list(pair(img_size)),
        "num_frames": int(num_frames),
        "tubelet": [int(t) for t in tubelet],
        "in_chans": int(in_chans),
        **VIDEO_VIT_SIZES[size],
        "mlp_ratio": float(mlp_ratio),
        "qkv_bias": bool(qkv_bias),
        "global_pool": global_pool,
        "class_token": bool(class_token),
    }
    args.update({k: int(v) for k, v in overrides.items()})
    return args


register_sizes(VideoViT, VIDEO_VIT_SIZES, __name__)  # timm.create_model("vit_s" | "vit_b" | "vit_l", ...)
