"""The video data set: one seeded clip (or several evaluation views) per video of a source.

What each piece does lives in its own module: :mod:`maskfeat.data.sources` finds the videos (folders, CSV / Kinetics
lists), :mod:`maskfeat.data.clips` picks the frame indices of a clip, :mod:`maskfeat.data.decode` decodes them
(PyAV or torchcodec behind one reader interface) and :mod:`maskfeat.data.video_transforms` augments them. The names
of those modules that were first defined here are re-exported.

Reproducibility: like :class:`maskfeat.data.images.ImageDataset`, :class:`VideoDataset` takes ``(index, sample_seed)``
keys from :class:`maskfeat.data.sampler.SeededSampler` and seeds torch's and Python's RNGs from ``sample_seed`` around
the temporal sampling and the transform, so a sample depends only on ``(seed, epoch, index)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import av
import numpy as np
import torch

from .clips import clip_indices, fit_and_warn, fit_clip_stride, random_clip_start, segment_indices, uniform_clip_starts
from .decode import (
    DAMAGED_BELOW,
    VideoInfo,
    check_backend,
    damaged,
    decode_clip,
    decode_frames,
    open_reader,
    probe_video,
    torchcodec_available,
)
from .logs import logger
from .sampler import seeded_rngs
from .sources import VIDEO_EXTENSIONS, DataError, LabeledFiles, scan_video_source
from .video_transforms import VideoEvalTransform, VideoTrainTransform

__all__ = [
    "DAMAGED_BELOW",
    "VIDEO_EXTENSIONS",
    "VideoDataset",
    "VideoInfo",
    "clip_indices",
    "damaged",
    "decode_clip",
    "decode_frames",
    "fit_clip_stride",
    "probe_video",
    "random_clip_start",
    "scan_video_source",
    "torchcodec_available",
    "segment_indices",
    "uniform_clip_starts",
]


def _failure_reason(exc: BaseException, path: str) -> str:
    """One-line reason for a decoding failure, without repeating the path."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = str(exc).replace(repr(path), "").replace(path, "")
    reason = " ".join(reason.split()).strip(" :") or type(exc).__name__
    return reason


class VideoDataset(LabeledFiles):
    """Videos of a source (class folders, flat folder or list file), one clip (or several views) per item.

    ``dataset[(index, sample_seed)]`` (keys from :class:`maskfeat.data.sampler.SeededSampler`) decodes the needed frames
    of video ``index`` and applies ``transform`` with torch's CPU RNG and Python's ``random`` seeded from
    ``sample_seed`` (their previous states are restored afterwards). ``dataset[index]`` uses ``sample_seed = index``.

    - ``mode="train"``: one clip of ``num_frames`` frames ``stride`` apart from a uniformly random start, augmented
      with :class:`~maskfeat.data.video_transforms.VideoTrainTransform` (short-side jitter, random resized crop, flip).
      Item: ``{"image": FloatTensor (3, T, H, W), "label": int, "seed": int}``. With ``repeats`` R > 1 (repeated
      augmentation: one decode, R independently augmented clips of it), ``"image"`` is ``(R, 3, T, H, W)`` and the
      item has ``"repeats": R``; :class:`maskfeat.masking.MaskCollator` puts the R clips into the batch as samples.
    - ``mode="eval"``: ``num_clips`` uniformly spaced clips (:func:`~maskfeat.data.clips.uniform_clip_starts`) x
      ``num_crops`` spatial crops (:class:`~maskfeat.data.video_transforms.VideoEvalTransform`), deterministic. With
      ``V = num_clips * num_crops > 1`` views the item is ``{"image": FloatTensor (V, 3, T, H, W), "label", "seed",
      "video_index": index}``, views ordered clip-major (``view = clip * num_crops + crop``), so predictions are
      averaged per ``video_index`` over the ``V`` views; with ``V == 1``, ``"image"`` is ``(3, T, H, W)`` as in
      training.

    An unreadable, truncated or damaged file (see :func:`~maskfeat.data.probe.damaged`: fewer than 90% of the frames
    its container declares can be read, or a clip runs past the end of what the decoder gives of such a file) gives
    ``{"unreadable": path}`` (one warning line naming the file on the ``maskfeat`` logger);
    :class:`maskfeat.masking.MaskCollator` drops such items and counts them (``num_bad``, ``bad_files``).

    Args:
        source: folder or list file scanned with :func:`~maskfeat.data.sources.scan_video_source` (unless ``files``
            is given).
        num_frames: frames per clip (``T``).
        stride: distance between consecutive clip frames.
        transform: train mode: uint8 ``(T, H, W, 3)`` -> float ``(3, T, H, W)``; eval mode: uint8 ``(T, H, W, 3)`` ->
            float ``(num_crops, 3, T, H, W)`` or ``(3, T, H, W)``. Default: the MaskFeat transform of the mode.
        mode: "train" or "eval".
        num_clips: temporal views per video (eval).
        num_crops: spatial views per clip (eval; 1 = centre crop, 3 = left/centre/right).
        crop_size: output side of the default transforms.
        files: explicit list of video paths (skips the scan).
        labels: one label per file (default: the scan's, or -1).
        classes: class names.
        backend: "pyav" (default), "torchcodec" or "auto".
        threads: decoder threads per item (1 = single-threaded: loader workers already run in parallel).
        repeats: train mode: augmented clips per decoded clip (repeated augmentation, SlowFast's ``NUM_SAMPLE``).
        sampling: "stride" (``num_frames`` frames ``stride`` apart, see above) or "segments" (one frame from each of
            ``num_frames`` equal segments of the whole video, :func:`~maskfeat.data.clips.segment_indices`;
            Something-Something v2; one temporal view).
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        num_frames: int = 16,
        stride: int = 4,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mode: str = "train",
        num_clips: int = 1,
        num_crops: int = 1,
        *,
        crop_size: int = 224,
        files: Sequence[str] | None = None,
        labels: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
        backend: str = "pyav",
        threads: int = 1,
        repeats: int = 1,
        sampling: str = "stride",
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if num_frames < 1 or stride < 1:
            raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
        if num_clips < 1 or num_crops < 1:
            raise ValueError(f"num_clips and num_crops must be >= 1, got {num_clips} and {num_crops}")
        if mode == "train" and (num_clips != 1 or num_crops != 1):
            raise ValueError("num_clips and num_crops (multi-view) apply to mode='eval' only")
        if repeats < 1 or (repeats > 1 and mode != "train"):
            raise ValueError(f"repeats must be >= 1 and applies to mode='train' only, got {repeats} in {mode!r}")
        self.repeats = int(repeats)
        if sampling not in ("stride", "segments") or (sampling == "segments" and num_clips != 1):
            raise ValueError(f"sampling must be 'stride' or 'segments' (one temporal view), got {sampling!r}")
        self.sampling = sampling
        check_backend(backend)
        if backend == "torchcodec" and not torchcodec_available():
            raise ValueError("video backend 'torchcodec' cannot decode here (not installed, or its FFmpeg libraries or "
                             "PyTorch version do not match); use 'pyav'")  # fmt: skip
        self.root = os.fspath(source)
        self.num_frames = int(num_frames)
        self.stride = int(stride)
        self.mode = mode
        self.num_clips = int(num_clips)
        self.num_crops = int(num_crops)
        self.backend = backend
        self.threads = int(threads)
        if transform is None:
            transform = VideoTrainTransform(crop_size) if mode == "train" else VideoEvalTransform(crop_size, num_crops)
        self.transform = transform
        self._set_files(scan_video_source, files, labels, classes)

    @property
    def num_views(self) -> int:
        """Views per item: 1 in training, ``num_clips * num_crops`` in evaluation."""
        return self.num_clips * self.num_crops

    def _read(self, path: str) -> torch.Tensor:
        """The frames of this item's clip(s), uint8 ``(num_clips * T, H, W, 3)``; train starts use torch's RNG."""
        reader = open_reader(path, self.backend, self.threads)
        reason = damaged(reader.info)
        if reason:
            raise DataError(reason)
        total = reader.info.num_frames
        if self.sampling == "segments":
            return reader.get_frames(segment_indices(total, self.num_frames, self.mode == "train"), strict=True)
        fit_and_warn(path, total, self.num_frames, self.stride)
        if self.mode == "train":
            starts = [random_clip_start(total, self.num_frames, self.stride)]
        else:
            starts = uniform_clip_starts(total, self.num_frames, self.stride, self.num_clips)
        indices = np.concatenate([clip_indices(total, self.num_frames, self.stride, s) for s in starts])
        return reader.get_frames(indices, strict=True)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, seed = self._split_key(key)
        path = self._paths[index]
        with seeded_rngs(seed):
            try:
                frames = self._read(path)
            except MemoryError:
                raise
            except Exception as exc:  # any decoder failure on one file must not stop a long run
                logger.warning("skipped unreadable video %s: %s", path, _failure_reason(exc, path))
                return {"unreadable": path}
            label = int(self._labels[index])
            if self.mode == "eval":
                return {"image": self._eval_views(frames), "label": label, "seed": seed, "video_index": index}
            if self.repeats == 1:
                return {"image": self.transform(frames), "label": label, "seed": seed}
            clips = torch.stack([self.transform(frames) for _ in range(self.repeats)])  # (R, 3, T, H, W)
            return {"image": clips, "label": label, "seed": seed, "repeats": self.repeats}

    def _eval_views(self, frames: torch.Tensor) -> torch.Tensor:
        """``(V, 3, T, H, W)`` views, clip-major, or ``(3, T, H, W)`` when there is one."""
        views = []
        for clip in frames.split(self.num_frames):
            out = self.transform(clip)
            views.append(out.unsqueeze(0) if out.dim() == 4 else out)
        image = torch.cat(views)
        return image[0] if image.shape[0] == 1 else image

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, videos={len(self)}, classes={len(self.classes)}, "
            f"mode={self.mode!r}, clip={self.num_frames}x{self.stride}, views={self.num_views})"
        )
