"""The exceptions maskfeat raises on purpose, in one module with no heavy imports.

The command line catches these to print one line and choose the exit status (see :mod:`maskfeat.cli`); importing
this module never imports torch, so ``maskfeat --help`` and a config error stay fast.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "Interrupted", "NonFiniteLossError", "Preempted"]


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line."""


class DataError(ValueError):
    """Bad data input (missing path, no images, ...); the message is one line and names the path."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class Preempted(Exception):
    """SIGTERM / SIGUSR1 arrived: a checkpoint was saved at the step boundary and the run stops."""

    def __init__(self, step: int):
        super().__init__(f"stopped by a signal at step {step}; checkpoint saved, rerun the same command to resume")
        self.step = step


class Interrupted(Preempted):
    """A first Ctrl-C (SIGINT) stopped the run: a checkpoint was saved at the step boundary (exit status 130)."""

    def __init__(self, step: int):
        Exception.__init__(self, f"interrupted at step {step}; checkpoint saved, rerun the same command to resume")
        self.step = step
