"""Image data: folder scanning, robust decoding, seeded dataset and sampler, transforms, built-in sample data."""

from .images import (
    IMAGE_EXTENSIONS,
    MEAN_RGB_UINT8,
    DataError,
    ImageDataset,
    SeededSampler,
    load_rgb,
    sample_seed,
    scan_image_folder,
)
from .sample import (
    SAMPLE_MOTIONS,
    SAMPLE_SOURCES,
    default_cache_dir,
    sample_image_folder,
    sample_labeled_folder,
    sample_video_folder,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NormalizeUint8,
    PILToUint8Tensor,
    RandomResizedCropFlip,
    denormalize,
    eval_transform,
    pretrain_transform,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MEAN_RGB_UINT8",
    "SAMPLE_MOTIONS",
    "SAMPLE_SOURCES",
    "DataError",
    "ImageDataset",
    "NormalizeUint8",
    "PILToUint8Tensor",
    "RandomResizedCropFlip",
    "SeededSampler",
    "default_cache_dir",
    "denormalize",
    "eval_transform",
    "load_rgb",
    "pretrain_transform",
    "sample_image_folder",
    "sample_labeled_folder",
    "sample_video_folder",
    "sample_seed",
    "scan_image_folder",
]
