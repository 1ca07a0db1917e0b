"""Run outputs that a person reads: the console (a progress bar on a terminal, log lines elsewhere),
``metrics.jsonl`` (one JSON object per line) and TensorBoard. Only rank 0 writes."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

from tqdm import tqdm

log = logging.getLogger("maskfeat")


def setup_logging(debug: bool = False) -> None:
    """Console logging for the ``maskfeat`` logger: plain one-line messages on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if debug else "%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def count_str(n: int) -> str:
    """A count as people read it: ``86.57M`` from a million on, else every digit (``1,930``)."""
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n:,}"


def baseline_note(loss: float, baseline: float) -> str:
    """``mean-target baseline 0.0457, -32%``: a pre-training loss read against the loss of predicting the mean
    target (what a model that learned nothing from the visible context scores)."""
    rel = f", {100 * (loss / baseline - 1):+.0f}%" if baseline > 0 and math.isfinite(loss) else ""
    return f"mean-target baseline {baseline:.4f}{rel}"


class RunLog:
    """metrics.jsonl + TensorBoard + console progress for one run.

    Args:
        output_dir: the run folder.
        total_steps: optimizer steps in the whole run (for the progress bar and ETA).
        start_step: the step a resumed run starts from; rows of metrics.jsonl past it (written after the last
            checkpoint of a killed run) are dropped so the file reads as one uninterrupted run.
        enabled: False on ranks other than 0.
        sample: what one training sample is, for the console's rate: ``img`` (images/s) or ``clips`` (clips/s).
            The metrics.jsonl key stays ``images_per_s`` for both (samples per second), as older runs have it.
    """

    def __init__(self, output_dir: str, total_steps: int, start_step: int = 0, enabled: bool = True,
                 sample: str = "img"):  # fmt: skip
        self.enabled, self.total_steps, self.start_step, self.sample = enabled, total_steps, start_step, sample
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = None
        self.bar = None
        self._t0, self._s0 = time.perf_counter(), start_step
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._truncate_after(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tb"), purge_step=start_step or None)
        except ImportError:  # tensorboard is a dependency; tolerate its absence in stripped environments
            log.warning("tensorboard is not installed: no TensorBoard logs")
        if sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True)

    def _truncate_after(self, step: int) -> None:
        if not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            rows = [line for line in f if line.strip()]
        keep = [r for r in rows if json.loads(r).get("step", 0) <= step]
        if len(keep) != len(rows):
            with open(self.path, "w") as f:
                f.writelines(keep)

    def write(self, row: dict, prefix: str = "train") -> None:
        """Append one row to metrics.jsonl and its numbers to TensorBoard under ``prefix/``."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])
            self.tb.flush()

    def progress(self, step: int, row: dict) -> None:
        """Advance the progress bar (terminal) or print a log line (anything else) at a logging step."""
        if not self.enabled:
            return
        rate = (step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        loss = f"{row['loss']:.4f}" + (f" ({baseline_note(row['loss'], row['baseline'])})" if "baseline" in row else "")
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"loss {loss}, lr {row['lr']:.2e}, {row['images_per_s']:.1f} {self.sample}/s")
        else:
            log.info(
                f"epoch {row['epoch']} step {step}/{self.total_steps} loss {loss} lr {row['lr']:.3e} "
                f"{row['images_per_s']:.1f} {self.sample}/s eta {_fmt_eta(eta)}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
