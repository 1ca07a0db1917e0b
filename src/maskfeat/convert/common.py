"""What every converter shares: the result type, renaming by rules, one-line errors."""

from __future__ import annotations

import re
from typing import Any, NamedTuple, NoReturn

import torch

from maskfeat.models.mvit import MVIT_SIZES

__all__ = ["Converted", "fail", "mvit_name", "rename"]


class Converted(NamedTuple):
    """A converted checkpoint.

    Attributes:
        encoder_state: The encoder's ``state_dict`` (the classifier included where the source has one).
        encoder_meta: ``{"architecture", "model_args", "pretrained_cfg"}`` as ``encoder.json`` holds them
            (``model_args["num_classes"]`` where the source has a classifier), plus ``"target"`` (the HOG settings)
            for pre-training sources.
        pretrain_state: The MaskFeat model's ``state_dict`` (``encoder.*``, ``mask_token``, ``head.*``) for
            pre-training sources, else None.
    """

    encoder_state: dict[str, torch.Tensor]
    encoder_meta: dict[str, Any]
    pretrain_state: dict[str, torch.Tensor] | None


def fail(src: str, why: str) -> NoReturn:
    """Raise the one-line error of a source that cannot be converted."""
    raise ValueError(f"cannot convert {src}: {why}")


def rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str | None]], src: str) -> dict[str, torch.Tensor]:
    """``state`` with every key renamed by the first rule ``(pattern, replacement)`` whose pattern matches
    (``re.sub``; replacement None drops the entry). A key no rule matches is an error: nothing is lost silently."""
    out, unknown = {}, []
    for key, value in state.items():
        rule = next(((p, r) for p, r in rules if re.search(p, key)), None)
        if rule is None:
            unknown.append(key)
        elif rule[1] is not None:
            out[re.sub(rule[0], rule[1], key)] = value
    if unknown:
        fail(src, f"{len(unknown)} weights of an unknown layout, e.g. {', '.join(unknown[:4])}")
    return out


def mvit_name(model_args: dict[str, Any]) -> str:
    """The MViT size whose depths, widths, heads and layout ``model_args`` has; else the name of the layout
    (``model_args`` hold every size argument, so any name of that layout rebuilds the model)."""
    for name, size in MVIT_SIZES.items():
        if all(model_args.get(k) == v for k, v in {"dim_mul_in_att": False, **size}.items()):
            return name
    return "mvit_v2_s_tv" if model_args["dim_mul_in_att"] else "mvit_v2_s"
