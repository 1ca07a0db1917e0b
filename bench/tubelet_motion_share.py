"""How much of each run's tubelet projection responds to change between the two frames of a tubelet:
|w[:, :, 1] - w[:, :, 0]| / |w[:, :, 1] + w[:, :, 0]| over the Conv3d kernel (random init: about 1)."""
import sys
import torch
from safetensors.torch import load_file
torch.manual_seed(0)
w = torch.nn.Conv3d(3, 128, (2, 16, 16)).weight.detach()
print("random init", round(float((w[:, :, 1] - w[:, :, 0]).norm() / (w[:, :, 1] + w[:, :, 0]).norm()), 3))
for path in sys.argv[1:]:
    sd = load_file(path)
    w = sd["patch_embed.weight"]
    d, s = (w[:, :, 1] - w[:, :, 0]).norm(), (w[:, :, 1] + w[:, :, 0]).norm()
    print(path, "diff/sum", round(float(d / s), 3), "norm", round(float(w.norm()), 2))
