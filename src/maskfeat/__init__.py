"""MaskFeat: masked feature prediction for self-supervised visual pre-training (Wei et al., CVPR 2022).

``import maskfeat`` adds its video encoders to timm's registry (``timm.create_model("mvit_v2_s")``, or a
``local-dir:`` / Hub folder written by ``maskfeat export --hub``); it imports torch and timm for that. The command
line (``maskfeat ...``, ``python -m maskfeat ...``) skips it, so that ``maskfeat --help`` and a config error stay
fast: its commands import what they need.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"


def _is_the_command_line() -> bool:
    """Whether this process is maskfeat's command line: ``python -m maskfeat`` (``sys.argv[0]`` is ``-m`` while the
    package is imported to find ``__main__``) or the ``maskfeat`` console script."""
    argv0 = (getattr(sys, "argv", None) or [""])[0]
    return argv0 == "-m" or os.path.splitext(os.path.basename(argv0))[0] == "maskfeat"


if not _is_the_command_line():
    import maskfeat.models.registry  # noqa: F401  (registers the video encoders with timm)
