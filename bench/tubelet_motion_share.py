"""How much of a video ViT's tubelet projection responds to change between the two frames of a tubelet.

For the Conv3d kernel ``w`` (D, 3, 2, P, P) of ``patch_embed.weight`` it prints ``|w1 - w0| / |w1 + w0|`` (Frobenius
norms of the kernel's frame-difference and frame-sum parts): about 1 for a random initialisation, under 1 when the
projection mostly adds the two frames (appearance), over 1 when it mostly takes their difference (change).

    python bench/tubelet_motion_share.py runs/vm_p8/pretrain/encoder.safetensors runs/vm_*/finetune/encoder.safetensors
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file


def motion_share(w: torch.Tensor) -> float:
    return float((w[:, :, 1] - w[:, :, 0]).norm() / (w[:, :, 1] + w[:, :, 0]).norm())


def main(paths: list[str]) -> None:
    for path in paths:
        w = load_file(path)["patch_embed.weight"]
        torch.manual_seed(0)
        init = torch.nn.Conv3d(w.shape[1], w.shape[0], tuple(w.shape[2:])).weight.detach()
        print(f"{path}: {motion_share(w):.3f} (a random initialisation of that shape: {motion_share(init):.3f}); "
              f"kernel norm {float(w.norm()):.2f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
