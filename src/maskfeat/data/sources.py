"""Finding samples: folder scanning (class sub-folders or flat), video lists (CSV / Kinetics), labeled files.

Every source gives ``(files, labels, classes)``: absolute paths, one label per file (-1 = unlabeled) and the class
names (empty unless the labels are named). :class:`LabeledFiles` is the base of the image and video data sets: it
holds that triple compactly and scans its root when no explicit file list is given.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from maskfeat.errors import DataError

from .ssv2 import is_ssv2_list, read_ssv2_list

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "DataError",
    "LabeledFiles",
    "find_files",
    "scan_folder",
    "scan_image_folder",
    "scan_video_source",
]

logger = logging.getLogger("maskfeat")

#: Accepted image file extensions (lower case, with the dot); matching is case-insensitive.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip

#: Accepted video file extensions (lower case, with the dot); matching is case-insensitive.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv",
)  # fmt: skip

Source = tuple[list[str], list[int], list[str]]  # (files, labels, classes)

# Header names accepted on the first line of a video list ("path,label").
_HEADER_PATH = {"path", "video", "video_path", "file", "filename"}
_HEADER_LABEL = {"label", "class", "class_name", "label_name"}
_MAX_MISSING_WARNINGS = 5


# ----------------------------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------------------------


def _has_extension(name: str, extensions: Sequence[str]) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def find_files(folder: str, extensions: Sequence[str]) -> list[str]:
    """All files with one of ``extensions`` under ``folder`` (recursive, following links, hidden entries
    skipped), sorted."""
    found: list[str] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:  # unreadable sub-folder: skip it rather than fail the whole scan
            logger.warning("skipped unreadable folder %s: %s", current, exc.strerror or exc)
            continue
        subdirs, files = _split_entries(entries, extensions)
        stack.extend(entry.path for entry in subdirs)
        found.extend(entry.path for entry in files)
    found.sort()
    return found


def _split_entries(
    entries: list[os.DirEntry], extensions: Sequence[str]
) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """``(sub-folders, files with one of extensions)`` among ``entries``; hidden and broken entries skipped."""
    subdirs, files = [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                subdirs.append(entry)
            elif _has_extension(entry.name, extensions) and entry.is_file():
                files.append(entry)
        except OSError:  # dangling link and the like
            continue
    return subdirs, files


def scan_folder(path: str | os.PathLike[str], extensions: Sequence[str], kind: str = "image") -> Source:
    """Lists the ``kind`` files (images, videos) of a folder, in ImageFolder layout or flat.

    If ``path`` has sub-folders that contain such files (at any depth), each such sub-folder is a class
    (``classes`` = their sorted names, label = position in ``classes``) and its files are found recursively.
    Otherwise ``path`` is a flat folder: every label is -1 and ``classes`` is empty.
    Hidden files and folders (name starting with ``.``) are skipped.

    Returns:
        ``(files, labels, classes)``: absolute file paths (sorted within each class), one label per file, class names.

    Raises:
        DataError: ``path`` does not exist, is not a directory, or holds no such files.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(root):
        raise DataError(f"data path does not exist: {root}")
    if not os.path.isdir(root):
        raise DataError(f"data path is not a directory: {root}")
    subdir_entries, loose_entries = _split_entries(list(os.scandir(root)), extensions)
    loose = sorted(entry.path for entry in loose_entries)
    per_class = {
        name: find_files(os.path.join(root, name), extensions) for name in sorted(e.name for e in subdir_entries)
    }
    classes = [name for name, found in per_class.items() if found]
    if not classes:
        if not loose:
            raise DataError(f"no {kind} files found in {root} (accepted extensions: {', '.join(extensions)})")
        return loose, [-1] * len(loose), []
    empty = [name for name, found in per_class.items() if not found]
    if empty:
        logger.warning("ignoring %d sub-folder(s) of %s without %ss: %s", len(empty), root, kind, ", ".join(empty[:10]))
    if loose:
        logger.warning("ignoring %d %s file(s) at the top level of %s: using its %d class sub-folders",
                       len(loose), kind, root, len(classes))  # fmt: skip
    files = [file for name in classes for file in per_class[name]]
    labels = [label for label, name in enumerate(classes) for _ in per_class[name]]
    return files, labels, classes


def scan_image_folder(path: str | os.PathLike[str]) -> Source:
    """Lists the images of a folder, in ImageFolder layout or flat: :func:`scan_folder` with image extensions."""
    return scan_folder(path, IMAGE_EXTENSIONS, "image")


# ----------------------------------------------------------------------------------------------------------------
# Video lists
# ----------------------------------------------------------------------------------------------------------------

_Entry = tuple[str, str | None, int]  # (absolute path, label text or None, line number)


def _split_list_line(line: str) -> list[str]:
    """``path,label`` (CSV quoting allowed) or ``path label`` (the label is the last blank-separated token)."""
    if "," in line:
        return [field.strip() for field in next(csv.reader([line]))]
    return line.rsplit(None, 1)


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _is_header(fields: list[str], base: str) -> bool:
    return (
        len(fields) == 2
        and fields[0].lower() in _HEADER_PATH
        and fields[1].lower() in _HEADER_LABEL
        and not os.path.exists(os.path.join(base, fields[0]))
    )


def _parse_entry(list_path: str, lineno: int, line: str, fields: list[str]) -> _Entry:
    """One list line's ``(absolute path, label text or None, line number)``."""
    if len(fields) > 2:
        raise DataError(f"{list_path}:{lineno}: expected 'path,label', got {len(fields)} fields: {line[:100]!r}")
    file, label_text = fields[0], (fields[1] if len(fields) == 2 else None)
    if not file:
        raise DataError(f"{list_path}:{lineno}: empty path: {line[:100]!r}")
    full = os.path.abspath(os.path.join(os.path.dirname(list_path), os.path.expanduser(file)))
    return full, label_text or None, lineno


def _read_entries(list_path: str) -> list[_Entry]:
    """The entries of a list file: blank lines, ``#`` comments and a header line skipped."""
    try:
        with open(list_path, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(f"cannot read video list {list_path}: {reason}") from None
    entries: list[_Entry] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = _split_list_line(line)
        if not entries and _is_header(fields, os.path.dirname(list_path)):
            continue
        entries.append(_parse_entry(list_path, lineno, line, fields))
    if not entries:
        raise DataError(f"video list {list_path} has no entries")
    return entries


def _label_mapping(list_path: str, entries: list[_Entry]) -> tuple[dict[str, int], list[str]]:
    """Label text -> label, and the class names (empty for integer labels)."""
    labeled = [(text, lineno) for _, text, lineno in entries if text is not None]
    ints = [_parse_int(text) for text, _ in labeled]
    if all(value is not None for value in ints):
        # Integer labels: used as they are (-1 = unlabeled).
        for (text, lineno), value in zip(labeled, ints):
            if value < -1:
                raise DataError(f"{list_path}:{lineno}: negative label {text!r}")
        return {text: value for (text, _), value in zip(labeled, ints)}, []
    # Class names (any non-integer label makes every label a name): sorted names -> 0..C-1. Built from every line,
    # missing files included, so the mapping does not depend on which files happen to be present.
    classes = sorted({text for text, _ in labeled})
    return {name: i for i, name in enumerate(classes)}, classes


def _read_video_list(list_path: str) -> Source:
    """Parses a ``path,label`` / ``path label`` list; see :func:`scan_video_source`."""
    entries = _read_entries(list_path)
    label_of, classes = _label_mapping(list_path, entries)
    exists = [os.path.isfile(full) for full, _, _ in entries]
    present = [entry for entry, found in zip(entries, exists) if found]
    missing = [entry for entry, found in zip(entries, exists) if not found]
    for full, _, lineno in missing[:_MAX_MISSING_WARNINGS]:
        logger.warning("skipped missing video %s (listed in %s line %d)", full, list_path, lineno)
    if len(missing) > _MAX_MISSING_WARNINGS:
        logger.warning("skipped %d more missing videos listed in %s", len(missing) - _MAX_MISSING_WARNINGS, list_path)
    if not present:
        raise DataError(f"none of the {len(entries)} videos listed in {list_path} exist")
    labels = [-1 if text is None else label_of[text] for _, text, _ in present]
    return [full for full, _, _ in present], labels, classes


def scan_video_source(path: str | os.PathLike[str]) -> Source:
    """Lists the videos of a source: a folder (class sub-folders or flat), a list file, or a single video.

    - A folder with sub-folders that contain video files (at any depth): each such sub-folder is a class
      (``classes`` = their sorted names, label = position in ``classes``), its videos found recursively.
    - A flat folder of video files: every label is -1 and ``classes`` is empty.
    - A list file (any name that is not a video, e.g. ``train.csv``): one video per line, ``path,label`` (CSV, quoting
      allowed) or ``path label`` (blank-separated, as in SlowFast's Kinetics lists; the label is the last token, so
      paths may contain blanks). Relative paths are relative to the list's folder. Labels are all integers (used as
      they are; -1 = unlabeled) or else class names (mapped to their index in the sorted set of names, returned as
      ``classes``). A line with only a path is unlabeled (-1). An optional header line (``path,label``), blank lines
      and ``#`` comments are skipped. Listed files that do not exist are skipped with a warning naming them.
    - A Something-Something v2 list (``something-something-v2-train.json`` beside its labels file): see
      :mod:`maskfeat.data.ssv2`.
    - A single video file: one unlabeled entry.

    Hidden files and folders (name starting with ``.``) are skipped; extensions are matched case-insensitively
    against :data:`VIDEO_EXTENSIONS` (list files are taken as they are, whatever the extension).

    Args:
        path: folder, list file or video file.

    Returns:
        ``(files, labels, classes)``: absolute paths, one label per file, class names (empty unless named).

    Raises:
        DataError: the path does not exist, holds no videos, a list line is malformed (the message names the line),
            or none of the listed files exist.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(root):
        raise DataError(f"data path does not exist: {root}")
    if os.path.isdir(root):
        return scan_folder(root, VIDEO_EXTENSIONS, "video")
    if _has_extension(os.path.basename(root), VIDEO_EXTENSIONS):
        return [root], [-1], []
    if is_ssv2_list(root):
        return read_ssv2_list(root)
    return _read_video_list(root)


# ----------------------------------------------------------------------------------------------------------------
# Labeled files
# ----------------------------------------------------------------------------------------------------------------


class _PathArray:
    """Immutable list of strings stored as one bytes buffer + offsets.

    A Python list of millions of ``str`` objects gets copied page by page in every DataLoader worker (reference
    counts are written on access); numpy buffers are not, so worker memory stays flat on ImageNet-size folders.
    """

    def __init__(self, items: Sequence[str]) -> None:
        encoded = [os.fsencode(item) for item in items]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return os.fsdecode(self._buffer[start:end].tobytes())


class LabeledFiles(Dataset):
    """What image and video data sets share: a list of files (stored compactly), one label each (-1 = unlabeled)
    and the class names. Subclasses call :meth:`_set_files` and implement ``__getitem__``."""

    root: str

    def _set_files(
        self,
        scan: Callable[[str], Source],
        files: Sequence[str] | None,
        labels: Sequence[int] | None,
        classes: Sequence[str] | None,
    ) -> None:
        """Use ``files`` / ``labels`` / ``classes`` when given, else ``scan(self.root)``."""
        if files is None:
            files, scanned_labels, scanned_classes = scan(self.root)
            labels = scanned_labels if labels is None else labels
            classes = scanned_classes if classes is None else classes
        if labels is None:
            labels = [-1] * len(files)
        if len(labels) != len(files):
            raise DataError(f"{len(files)} files but {len(labels)} labels for {self.root}")
        self._paths = _PathArray(list(files))
        self._labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes: list[str] = list(classes) if classes is not None else []

    @staticmethod
    def _split_key(key: tuple[int, int] | int) -> tuple[int, int]:
        """``(index, sample_seed)`` of a sampler key; a plain index is its own seed."""
        if isinstance(key, (tuple, list)):
            return int(key[0]), int(key[1])
        return int(key), int(key)

    # Public views (lists are built on demand: keep them out of hot loops on large data sets).
    @property
    def files(self) -> list[str]:
        """File paths, in index order."""
        return [self._paths[i] for i in range(len(self._paths))]

    @property
    def labels(self) -> list[int]:
        """Labels, in index order (-1 = unlabeled)."""
        return self._labels.tolist()

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for an unlabeled source)."""
        if self.classes:
            return len(self.classes)
        return int(self._labels.max()) + 1 if len(self._labels) and self._labels.max() >= 0 else 0

    def __len__(self) -> int:
        return len(self._paths)
