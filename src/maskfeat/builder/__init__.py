"""The builder: from a config to what a command runs. The encoder's arguments, the MaskFeat model, the classifier,
the data sets with their transforms, the mask collate, the optimizer and its schedule, and the run's resolved
settings.

This is the one place where images and video are told apart. The models see an image as a clip of one frame, so
past this package the two differ only in the data: which folder is read, how it is decoded and augmented, and the
grid the masks are drawn on. Three modules: :mod:`~maskfeat.builder.run` (what kind of run, its resolved settings),
:mod:`~maskfeat.builder.models` and :mod:`~maskfeat.builder.data`; every name is importable from
``maskfeat.builder``.
"""

from .data import (
    check_drawable,
    data_folder,
    image_mask_type,
    label_collate,
    labeled_folders,
    mask_collate,
    mask_type,
    pretrain_dataset,
    token_grid,
    train_dataset,
    val_dataset,
    val_loader,
    view_dataset,
)
from .models import (
    build_classifier,
    build_optimizer_and_schedule,
    build_pretrain_model,
    encoder_args,
    fit_positions,
    load_pretrained,
    new_classifier,
)
from .run import (
    CLASSIFIERS,
    SAMPLE_IMAGE_SIZE,
    SampleKind,
    complete_encoder_meta,
    hflip,
    is_video,
    make_pretrained_cfg,
    resolve,
    sample_kind,
)

__all__ = [
    "CLASSIFIERS", "SAMPLE_IMAGE_SIZE", "SampleKind", "build_classifier", "build_optimizer_and_schedule",
    "build_pretrain_model", "check_drawable", "complete_encoder_meta", "data_folder", "encoder_args", "fit_positions",
    "hflip", "image_mask_type", "is_video", "label_collate", "labeled_folders", "load_pretrained",
    "make_pretrained_cfg", "mask_collate", "mask_type", "new_classifier", "pretrain_dataset", "resolve",
    "sample_kind", "token_grid", "train_dataset", "val_dataset", "val_loader", "view_dataset",
]  # fmt: skip
