"""Encoders and the MaskFeat pre-training wrapper."""

from maskfeat.models.maskfeat import MaskFeat, masked_mse
from maskfeat.models.vit import ARCHITECTURES, create_encoder, encoder_model_args, encoder_patch_size

__all__ = ["ARCHITECTURES", "MaskFeat", "create_encoder", "encoder_model_args", "encoder_patch_size", "masked_mse"]
