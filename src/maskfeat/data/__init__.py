"""Data: one module per concept.

- :mod:`~maskfeat.data.sources`: finding samples (folders, CSV / Kinetics lists) and the labeled-files base;
- :mod:`~maskfeat.data.sampler`: per-sample seeds and the seeded, sharded, resumable sampler;
- :mod:`~maskfeat.data.images`: image decoding and the image data set;
- :mod:`~maskfeat.data.clips`: clip sampling; :mod:`~maskfeat.data.decode`: video decoding behind one reader interface
  (:mod:`~maskfeat.data.probe`, :mod:`~maskfeat.data.pyav_reader`, :mod:`~maskfeat.data.torchcodec_reader`);
  :mod:`~maskfeat.data.video`: the video data set;
- :mod:`~maskfeat.data.collate`: batching, and drawing each sample's mask from its seed;
  :mod:`~maskfeat.data.loader`: the data loader (and which folder a run reads);
- :mod:`~maskfeat.data.transforms`, :mod:`~maskfeat.data.video_transforms`: augmentations;
  :mod:`~maskfeat.data.sample`: built-in sample data.

The image-side names are re-exported here.
"""

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
