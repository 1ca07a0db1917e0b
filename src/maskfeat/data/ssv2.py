"""Something-Something v2 in its release layout: a JSON list of videos and a JSON map of class templates.

The release folder holds ``something-something-v2-labels.json`` (``{"Putting [something] on a surface": "0", ...}``:
template -> class index), ``something-something-v2-train.json`` and ``something-something-v2-validation.json``
(lists of ``{"id": "78687", "template": "Putting [something] on a surface", "label": "...", "placeholders": [...]}``)
and the videos ``<id>.webm``, in the folder or in one sub-folder of it (the release's ``20bn-something-something-v2/``).
``labels.json`` / ``train.json`` / ``validation.json`` are accepted as the short names.

A list's class is its ``template`` with the brackets removed, looked up in the labels file, as the official
implementation does (``label`` names the objects and is not the class). Classes are in index order, so a training
and a validation list of one release have the same classes. Its classes are defined by direction (``Pushing
[something] from left to right``), so a horizontal flip would change the label: maskfeat does not flip these
clips unless ``data.hflip`` says so.
"""

from __future__ import annotations

import json
import logging
import os

from maskfeat.errors import DataError

__all__ = ["LABEL_FILES", "is_ssv2_list", "read_ssv2_list"]

logger = logging.getLogger(__name__)

LABEL_FILES = ("something-something-v2-labels.json", "labels.json")
_VIDEO_EXTENSIONS = (".webm", ".mp4")


def is_ssv2_list(path: str) -> bool:
    """A ``.json`` list with a Something-Something v2 labels file beside it."""
    folder = os.path.dirname(os.path.abspath(path))
    return path.lower().endswith(".json") and any(os.path.isfile(os.path.join(folder, n)) for n in LABEL_FILES)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _classes(folder: str) -> dict[str, int]:
    """Template (brackets removed) -> class index, from the labels file of ``folder``."""
    path = next(os.path.join(folder, n) for n in LABEL_FILES if os.path.isfile(os.path.join(folder, n)))
    mapping = _read_json(path)
    if not isinstance(mapping, dict):
        raise DataError(f"{path} is not a Something-Something v2 labels file: expected {{template: index}}")
    try:
        return {template.replace("[", "").replace("]", ""): int(index) for template, index in mapping.items()}
    except (TypeError, ValueError):
        raise DataError(f"{path}: every class index must be an integer") from None


def _video_index(folder: str) -> dict[str, str]:
    """Video id -> path, for the videos in ``folder`` and its direct sub-folders."""
    found: dict[str, str] = {}
    for where in [folder, *(e.path for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))]:
        for entry in os.scandir(where):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in _VIDEO_EXTENSIONS and entry.is_file():
                found.setdefault(stem, entry.path)
    return found


def read_ssv2_list(path: str) -> tuple[list[str], list[int], list[str]]:
    """``(files, labels, classes)`` of a Something-Something v2 list (see the module). Listed videos that are not
    there are skipped with a warning; a template that is not in the labels file is an error naming it."""
    folder = os.path.dirname(os.path.abspath(path))
    index_of = _classes(folder)
    classes = [t for t, _ in sorted(index_of.items(), key=lambda kv: kv[1])]
    if [index_of[t] for t in classes] != list(range(len(classes))):
        raise DataError(f"the class indices of the labels file in {folder} are not 0..{len(classes) - 1}")
    videos, files, labels, missing = _video_index(folder), [], [], []
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise DataError(f"{path} is not a Something-Something v2 list: expected a JSON list of videos")
    for entry in entries:
        template = str(entry.get("template", "")).replace("[", "").replace("]", "")
        if template not in index_of:
            raise DataError(f"{path}: video {entry.get('id')} has the template '{template}', not in the labels file")
        video = videos.get(str(entry.get("id")))
        if video is None:
            missing.append(str(entry.get("id")))
            continue
        files.append(video)
        labels.append(index_of[template])
    if missing:
        logger.warning("skipped %d videos listed in %s that are not in %s (e.g. %s)", len(missing), path, folder,
                       ", ".join(missing[:3]))  # fmt: skip
    if not files:
        raise DataError(f"none of the {len(entries)} videos listed in {path} are in {folder}")
    return files, labels, classes
