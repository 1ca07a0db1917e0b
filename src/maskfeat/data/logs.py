"""The data loaders' logger and their once-per-file warnings."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["logger", "warn_once"]

logger = logging.getLogger("maskfeat")

_warned: set[tuple[str, str]] = set()


def warn_once(path: str, kind: str, message: str, *args: Any) -> None:
    """Logs ``message`` the first time this process sees ``(path, kind)`` (once per file, not once per epoch)."""
    key = (path, kind)
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)
