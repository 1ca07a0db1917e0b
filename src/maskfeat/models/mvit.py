"""MViTv2-S/B/L video encoders built on torchvision's MViT blocks, in MaskFeat's official layout or torchvision's.

Li et al., "MViTv2: Improved Multiscale Vision Transformers for Classification and Detection", CVPR 2022: a
3x7x7 / stride 2x4x4 convolutional patch embedding, then four stages at strides 4, 8, 16, 32 whose first block
pools the queries by 2x2 spatially and doubles the heads; keys/values are pooled with an adaptive stride
(1x8x8 in stage 1, divided by every query stride); relative position embeddings and residual pooling.

Sizes (stage depths, stage-1 width, stage-1 heads), widths and heads doubling each stage:

* ``mvit_v2_s``: [1, 2, 11, 2], 96 (96 -> 768), 1 (1, 2, 4, 8): 16 blocks
* ``mvit_v2_b``: [2, 3, 16, 3], 96 (96 -> 768), 1: 24 blocks
* ``mvit_v2_l``: [2, 6, 36, 4], 144 (144 -> 1152), 2 (2, 4, 8, 16): 48 blocks
* ``mvit_v2_s_tv``: ``mvit_v2_s`` in torchvision's supervised layout (below), which loads torchvision's weights.

Where the width doubles. The official MaskFeat configs (SlowFast ``configs/masked_ssl/k400_MVITv2_*``) leave
``MVIT.DIM_MUL_IN_ATT`` False: the *last block of a stage* widens, at its end: its attention and ``norm2`` run at
the stage width, its MLP maps to the next width and a linear ``project`` of the ``norm2`` output is its skip
branch (torchvision's ``proj_after_attn=False``); the heads double one block later, at the next stage's first
block. torchvision's ``mvit_v2_s`` widens in the *first block of a stage*, inside the attention
(``proj_after_attn=True``, ``dim_mul_in_att=True`` here). Same blocks, different widths: the MaskFeat MViT-S
pre-training model (encoder, [MASK] token, HOG head) has 36,253,356 parameters, in torchvision's layout 34,315,980.

MaskFeat pre-training (as the official SlowFast code) keeps the output at stride 16: the *pre-training variant*
sets the last stage's query-pooling stride to 1 (its width and heads still double). Without that query stride the
adaptive key/value stride is not divided either, so the last stage pools keys/values 1x2x2 (at stride 16) instead
of 1x1x1 (at stride 32). Pooling layers keep their (depthwise conv + norm) parameters whatever the stride, and the
skip max-pool has none, so the fine-tuning variant loads everything but the last stage's relative position tables
whose length follows the pooled sizes: :func:`load_pretrained_mvit` resamples those.

Other frame sizes (e.g. AVA's whole-frame test view, ``detect.eval_view=full``) run as they are: each attention
resamples its relative position tables linearly to the lengths that the token grid of the input needs, at every
call and without changing the parameters (torchvision's attention does this, as the official MViT code does), so
at the size the tables are built for they are used untouched and the outputs do not change.

torchvision internals used (torchvision >= 0.15; checked with 0.29): ``MViT.__init__``'s arguments, its
submodules ``conv_proj`` (Conv3d patch embedding), ``pos_encoding`` (``PositionalEncoding``: prepends the class
token; with ``rel_pos_embed=True`` it holds no absolute position embedding), ``blocks`` (``MultiscaleBlock``,
called as ``block(x, thw) -> (x, thw)``), ``norm`` and ``head`` (``Sequential(Dropout, Linear)``); the attention's
``rel_pos_h/w/t`` parameter names; and ``MSBlockConfig``. We do not call ``MViT.forward`` (it assumes the default
clip size and always classifies), but run the same steps, inserting the [MASK] token after ``conv_proj``.

The sizes are registered in timm's registry under the names above (timm's own MViTv2 models are ``mvitv2_small``
etc., other names and other modules: no clash), e.g. ``timm.create_model("mvit_v2_s", pretrain=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn
from torchvision.models.video.mvit import MSBlockConfig, MViT

from maskfeat.models.layers import TimmHooks, apply_token_mask, pair, register_sizes
from maskfeat.models.resample import REL_POS_NAMES as _REL_POS_NAMES
from maskfeat.models.resample import resize_rel_pos

__all__ = [
    "MVIT_SIZES",
    "MViTEncoder",
    "MViTLoadReport",
    "load_pretrained_mvit",
    "mvit_args",
    "mvit_block_settings",
]  # + the entrypoints mvit_v2_s, mvit_v2_b, mvit_v2_l, mvit_v2_s_tv

MVIT_SIZES: dict[str, dict[str, Any]] = {
    "mvit_v2_s": {"depths": [1, 2, 11, 2], "embed_dim": 96, "num_heads": 1},
    "mvit_v2_b": {"depths": [2, 3, 16, 3], "embed_dim": 96, "num_heads": 1},
    "mvit_v2_l": {"depths": [2, 6, 36, 4], "embed_dim": 144, "num_heads": 2},
    # torchvision's supervised mvit_v2_s (the width doubles in the attention): loads torchvision's weights
    "mvit_v2_s_tv": {"depths": [1, 2, 11, 2], "embed_dim": 96, "num_heads": 1, "dim_mul_in_att": True},
}

# MViTv2's fixed choices: the patch embedding, the pooling kernels, the initial adaptive key/value stride.
PATCH_KERNEL, PATCH_STRIDE, PATCH_PADDING = (3, 7, 7), (2, 4, 4), (1, 3, 3)
POOL_KERNEL = (3, 3, 3)
KV_STRIDE = (1, 8, 8)
STAGE_Q_STRIDE = (1, 2, 2)
# torchvision's names of the relative position tables of an attention layer.


def mvit_block_settings(
    depths: Sequence[int], embed_dim: int, num_heads: int, pretrain: bool = False, dim_mul_in_att: bool = False
) -> list[MSBlockConfig]:
    """One :class:`MSBlockConfig` per block of an MViTv2 with stage ``depths``.

    Stage ``s`` has width ``embed_dim * 2**s`` and ``num_heads * 2**s`` heads; its first block (``s > 0``) pools
    the queries by ``STAGE_Q_STRIDE`` and divides the key/value stride by it. Every block pools queries and
    keys/values with a 3x3x3 kernel (stride 1 where it does not downsample).

    Args:
        depths: Blocks per stage (four for MViTv2).
        embed_dim: Width of the first stage.
        num_heads: Heads of the first stage.
        pretrain: MaskFeat's pre-training variant: no query pooling in the last stage (output at stride 16).
        dim_mul_in_att: torchvision's layout: a stage's first block takes the previous width in and widens in
            its attention. False (the official MaskFeat layout): a stage's last block widens to the next stage's
            width in its MLP, with a skip projection.
    """
    if len(depths) < 1 or min(depths) < 1:
        raise ValueError(f"every stage needs at least one block, got depths={list(depths)}")
    stage_of = [s for s, depth in enumerate(depths) for _ in range(depth)]  # the stage of every block
    last = len(depths) - 1
    settings: list[MSBlockConfig] = []
    kv_stride = list(KV_STRIDE)
    for i, s in enumerate(stage_of):
        first = i > 0 and stage_of[i - 1] != s  # the first block of stages 1, 2, ...
        downsample = first and not (pretrain and s == last)
        stride_q = list(STAGE_Q_STRIDE) if downsample else [1, 1, 1]
        # the adaptive key/value stride: keys stay at (about) the same resolution through the network
        kv_stride = [max(k // q, 1) for k, q in zip(kv_stride, stride_q)]
        if dim_mul_in_att:
            dim_in, dim_out = embed_dim * 2 ** (s - first), embed_dim * 2**s
        else:
            dim_in, dim_out = embed_dim * 2**s, embed_dim * 2 ** stage_of[min(i + 1, len(stage_of) - 1)]
        settings.append(
            MSBlockConfig(
                num_heads=num_heads * 2**s,
                input_channels=dim_in,
                output_channels=dim_out,
                kernel_q=list(POOL_KERNEL),
                kernel_kv=list(POOL_KERNEL),
                stride_q=stride_q,
                stride_kv=list(kv_stride),
            )
        )
    return settings


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class MViTEncoder(TimmHooks, nn.Module):
    """An MViTv2 (torchvision's modules) with MaskFeat's [MASK] token and a timm-style interface.

    The submodules are torchvision's ``MViT`` ones under the same names (``conv_proj``, ``pos_encoding``,
    ``blocks``, ``norm``, ``head``), so the ``state_dict`` of a fine-tuning variant with ``num_classes > 0``
    loads into (and from) a torchvision ``MViT`` with the same block settings (``mvit_v2_s_tv``: torchvision's
    ``mvit_v2_s``). ``num_classes == 0`` replaces the classifier by Identity (the pre-training encoder has none).
    With ``fc_norm`` the final norm is applied after pooling (module ``fc_norm``, ``norm`` is Identity), as timm.

    Args:
        depths: Blocks per stage.
        embed_dim: Width of the first stage (the patch embedding, and the [MASK] token).
        num_heads: Heads of the first stage.
        img_size: Frame size (int or (H, W)) the relative position tables are sized for.
        num_frames: Clip length T.
        pretrain: Pre-training variant: the last stage keeps stride 16 (see :func:`mvit_block_settings`).
        num_classes: Classifier outputs, 0 = none.
        drop_path_rate: Stochastic depth of the last block (torchvision: linear in the block index from 0).
        head_drop: Dropout before the classifier (torchvision's default 0.5).
        global_pool: ``'token'`` (the class token, as torchvision) or ``'avg'`` (mean of the patch tokens).
        dim_mul_in_att: Where the width doubles (see :func:`mvit_block_settings`): False = the official MaskFeat
            layout, True = torchvision's.
        fc_norm: Normalise after pooling instead of before (timm's ``fc_norm``): the official MaskFeat fine-tuning
            head with mean pooling (mean of the patch tokens, LayerNorm, linear). None = ``global_pool == 'avg'``.
    """

    STEM = r"^conv_proj|^pos_encoding"  # timm's layer grouping: the embedding first, norm / head last
    LAST = r"^norm|^fc_norm"

    def __init__(
        self,
        depths: Sequence[int] = (1, 2, 11, 2),
        embed_dim: int = 96,
        num_heads: int = 1,
        img_size: int | Sequence[int] = 224,
        num_frames: int = 16,
        pretrain: bool = False,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.5,
        global_pool: str = "token",
        dim_mul_in_att: bool = False,
        fc_norm: bool | None = None,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        if fc_norm and global_pool != "avg":
            raise ValueError("fc_norm=True needs global_pool='avg' (the norm of the pooled patch tokens)")
        H, W = pair(img_size)
        self.block_setting = mvit_block_settings(depths, embed_dim, num_heads, pretrain, dim_mul_in_att)
        if len(self.block_setting) < 2:
            raise ValueError("torchvision's MViT needs at least two blocks (its drop-path schedule divides by n - 1)")
        mvit = MViT(
            spatial_size=(H, W),
            temporal_size=num_frames,
            block_setting=self.block_setting,
            residual_pool=True,  # MViTv2's residual pooling connection
            residual_with_cls_embed=False,
            rel_pos_embed=True,  # MViTv2's decomposed relative position embeddings (no absolute ones)
            proj_after_attn=dim_mul_in_att,  # False: the width changes in the MLP, with a skip projection
            dropout=head_drop,
            stochastic_depth_prob=drop_path_rate,
            num_classes=max(num_classes, 1),
            patch_embed_kernel=PATCH_KERNEL,
            patch_embed_stride=PATCH_STRIDE,
            patch_embed_padding=PATCH_PADDING,
        )
        # Adopt torchvision's modules under their own names (see the class docstring); MViT.forward is not used.
        self.conv_proj = mvit.conv_proj
        self.pos_encoding = mvit.pos_encoding
        self.blocks = mvit.blocks
        self.norm = nn.Identity() if fc_norm else mvit.norm  # the final norm of the tokens ...
        self.fc_norm = mvit.norm if fc_norm else nn.Identity()  # ... or of the pooled features
        self.head = mvit.head if num_classes > 0 else nn.Identity()

        self.pretrain = pretrain
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.dim_mul_in_att = dim_mul_in_att
        self.num_prefix_tokens = 1  # torchvision's PositionalEncoding always prepends a class token
        self.embed_dim = embed_dim  # width of the patch embedding (and of the mask token)
        self.num_features = self.block_setting[-1].output_channels  # width of the output tokens
        self.grad_checkpointing = False
        self.clip_size = (int(num_frames), H, W)  # the input (T, H, W) the model is built for
        self.patch_grid = (
            _conv_out(num_frames, PATCH_KERNEL[0], PATCH_STRIDE[0], PATCH_PADDING[0]),
            _conv_out(H, PATCH_KERNEL[1], PATCH_STRIDE[1], PATCH_PADDING[1]),
            _conv_out(W, PATCH_KERNEL[2], PATCH_STRIDE[2], PATCH_PADDING[2]),
        )
        grid = list(self.patch_grid)
        for cnf in self.block_setting:  # the query pooling (conv, padding kernel // 2) sets the token grid
            grid = [_conv_out(n, k, s, k // 2) if s > 1 else n for n, k, s in zip(grid, cnf.kernel_q, cnf.stride_q)]
        self.output_grid = tuple(grid)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names / fnmatch patterns without weight decay: the class token and relative position tables."""
        return {"pos_encoding.class_token", *(f"blocks.*.attn.{n}" for n in _REL_POS_NAMES)}

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encodes a clip; returns every token after the final norm (none with ``fc_norm``), the class token first.

        Args:
            x: (B, 3, T, H, W) clip.
            mask: None or bool (B, T', H', W') / (B, T'H'W') on the patch-embedding grid ``patch_grid``
                (T/2, H/4, W/4), True = masked.
            mask_token: (embed_dim,) / (1, 1, embed_dim) embedding put in the masked positions.

        Returns:
            (B, 1 + N_out, num_features), N_out = prod(output_grid) for the default clip size (another size: the
            input's T/2 x H/32 x W/32, rounded up; H/16 x W/16 for the pre-training variant).
        """
        x = self.conv_proj(x)  # (B, C, T', H', W')
        thw = (int(x.shape[2]), int(x.shape[3]), int(x.shape[4]))
        x = x.flatten(2).transpose(1, 2)  # (B, T'H'W', C), tokens ordered (t, h, w)
        # [MASK] replaces the masked patch embeddings before the positional encoding (class token; relative
        # positions act inside the attention), as MaskFeat does.
        x = apply_token_mask(x, mask, mask_token)
        x = self.pos_encoding(x)  # (B, 1 + N, C)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x, thw = torch.utils.checkpoint.checkpoint(block, x, thw, use_reentrant=False)
            else:
                x, thw = block(x, thw)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pools the output of :meth:`forward_features` (B, 1 + N, D) and classifies: (B, num_classes)."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.fc_norm(x)
        if pre_logits:
            return x
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifies a clip (B, 3, T, H, W) -> (B, num_classes) (pooled features when num_classes == 0)."""
        return self.forward_head(self.forward_features(x))


# -------------------------------------------------------------------------------------------------------------------
# JSON-able arguments, the timm entrypoints, and loading pre-trained weights
# -------------------------------------------------------------------------------------------------------------------


def mvit_args(
    size: str = "mvit_v2_s",
    img_size: int | Sequence[int] = 224,
    num_frames: int = 16,
    pretrain: bool = False,
    global_pool: str = "token",
    fc_norm: bool | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The complete, JSON-able architecture arguments of an :class:`MViTEncoder` of ``size`` (see MVIT_SIZES).

    ``overrides`` may change ``depths``, ``embed_dim`` or ``num_heads`` (tiny test models). Training settings
    (drop path, head dropout, classes) stay out. ``fc_norm`` None resolves as the encoder does (``'avg'``).
    """
    if size not in MVIT_SIZES:
        raise ValueError(f"unknown MViT size '{size}'; choose one of {', '.join(MVIT_SIZES)}")
    unknown = set(overrides) - {"depths", "embed_dim", "num_heads"}
    if unknown:
        raise ValueError(f"unknown MViT arguments: {sorted(unknown)}")
    arch = {**MVIT_SIZES[size], **overrides}
    return {
        "depths": [int(d) for d in arch["depths"]],
        "embed_dim": int(arch["embed_dim"]),
        "num_heads": int(arch["num_heads"]),
        "img_size": list(pair(img_size)),
        "num_frames": int(num_frames),
        "pretrain": bool(pretrain),
        "global_pool": global_pool,
        "dim_mul_in_att": bool(arch.get("dim_mul_in_att", False)),
        "fc_norm": global_pool == "avg" if fc_norm is None else bool(fc_norm),
    }


register_sizes(MViTEncoder, MVIT_SIZES, __name__)  # timm.create_model("mvit_v2_s" | ... | "mvit_v2_s_tv", ...)


class MViTLoadReport(NamedTuple):
    """What :func:`load_pretrained_mvit` did.

    Attributes:
        missing_keys: Fine-tuning model entries not in the pre-trained state (kept as initialised: the classifier).
        unexpected_keys: Pre-trained entries not loaded (absent from the fine-tuning model, or the pre-training
            classifier / wrapper parameters such as ``mask_token`` and the HOG ``head``).
        resized_keys: Relative position tables resampled to the fine-tuning length: name -> (old shape, new shape).
    """

    missing_keys: list[str]
    unexpected_keys: list[str]
    resized_keys: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]


def load_pretrained_mvit(finetune_model: MViTEncoder, pretrain_state: dict[str, torch.Tensor]) -> MViTLoadReport:
    """Loads the weights of a pre-training variant into a fine-tuning one (query pooling of the last stage restored).

    Every pooling layer keeps its parameters (depthwise 3x3x3 conv + LayerNorm) whatever its stride and the skip
    max-pool has none, so all block weights carry over; relative position tables whose length changed (the last
    stage's, ``2 * max(q, kv) - 1`` of the pooled sizes; also any table after a change of clip size) are resampled
    linearly along their length. A model that pools the mean of the tokens and normalises after it (``fc_norm``,
    the official MaskFeat fine-tuning head) takes the pre-trained final norm as that norm, as the official code
    does. The classifier is never taken from ``pretrain_state``.

    Args:
        finetune_model: The model to load into (modified in place).
        pretrain_state: The encoder's ``state_dict``, or a whole pre-training wrapper's (keys ``encoder.*``; the
            other keys are reported as unexpected).

    Returns:
        A :class:`MViTLoadReport`.

    Raises:
        ValueError: A non-relative-position tensor has a different shape (another architecture).
    """
    unexpected: list[str] = []
    state = dict(pretrain_state)
    if any(k.startswith("encoder.") for k in state):
        unexpected += [k for k in state if not k.startswith("encoder.")]
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    own = finetune_model.state_dict()
    if "fc_norm.weight" in own and "norm.weight" not in own:  # mean pooling: the final norm follows the pooling
        state = {("fc_norm." + k[len("norm.") :] if k.startswith("norm.") else k): v for k, v in state.items()}
    to_load: dict[str, torch.Tensor] = {}
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    mismatched: list[str] = []
    for k, v in state.items():
        if k not in own or k.startswith("head."):
            unexpected.append(k)
            continue
        want = own[k].shape
        if v.shape != want:
            if k.rsplit(".", 1)[-1] in _REL_POS_NAMES and v.ndim == 2 and v.shape[1] == want[1]:
                resized[k] = (tuple(v.shape), tuple(want))
                v = resize_rel_pos(v, want[0])
            else:
                mismatched.append(f"{k}: {tuple(v.shape)} vs {tuple(want)}")
                continue
        to_load[k] = v
    if mismatched:
        raise ValueError("pre-trained weights do not fit the model: " + "; ".join(mismatched))
    result = finetune_model.load_state_dict(to_load, strict=False)
    return MViTLoadReport(sorted(result.missing_keys), sorted(unexpected), resized)
