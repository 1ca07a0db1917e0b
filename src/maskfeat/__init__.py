"""MaskFeat: masked feature prediction for self-supervised visual pre-training (Wei et al., CVPR 2022)."""

__version__ = "0.1.0"
