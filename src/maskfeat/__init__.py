"""MaskFeat: masked feature prediction for self-supervised visual pre-training (Wei et al., CVPR 2022).

Importing maskfeat makes timm know its video encoders (``timm.create_model("mvit_v2_s")``, or a ``local-dir:`` /
Hub folder written by ``maskfeat export --hub``) as soon as timm is imported, before or after maskfeat, without
importing torch itself: ``maskfeat --help`` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"


def _register_video_encoders() -> None:
    try:
        importlib.import_module("maskfeat.models.registry")  # its timm.register_model calls
    except Exception as e:  # never break the user's `import timm`
        warnings.warn(f"maskfeat could not register its video encoders with timm: {e}", stacklevel=2)


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first ``import timm`` it hands back timm's own spec, whose loader then also
    registers maskfeat's video encoders right after timm's module has run. It removes itself at once."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001 (importlib's signature)
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_timm = spec.loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            run_timm(module)
            _register_video_encoders()

        spec.loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    _register_video_encoders()
elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTimmImport())
