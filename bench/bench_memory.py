"""Peak memory of a MaskFeat pre-training step, with and without activation checkpointing, side by side.

Each setting runs in its own fresh process (peak counters cannot be reset reliably on the CPU): build the model
and AdamW, run ``--steps`` training steps, report the peak. On CUDA the peak is ``torch.cuda.max_memory_allocated``;
on the CPU it is the process's peak resident set (``ru_maxrss``), and the activation memory is that peak minus the
resident set just before the first step (weights, gradients and optimizer state are allocated by then).

    python bench/bench_memory.py --model vit_base --batch 8                      # CPU, float32
    python bench/bench_memory.py --model vit_base --batch 128 --amp bf16         # on a GPU: the issue's setting
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from maskfeat.data.collate import MaskCollator  # noqa: E402
from maskfeat.models import MaskFeat, create_encoder, encoder_model_args  # noqa: E402
from maskfeat.optim import build_optimizer  # noqa: E402
from maskfeat.targets import build_target  # noqa: E402

MODELS = {
    "vit_tiny": "vit_tiny_patch16_224",  # for smoke runs (bench/gpu_check.py --tiny)
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
}


def _rss_mib() -> float:
    """Current resident set of this process, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(args: argparse.Namespace) -> dict:
    """One setting, in this process."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MaskFeat(create_encoder(MODELS[args.model], encoder_model_args(224)), build_target("hog", 16)).to(device)
    model.encoder.set_grad_checkpointing(args.checkpointing)
    optimizer = build_optimizer(model, 1e-4, 0.05)
    batch = MaskCollator("block", (14, 14), 0.4)(
        [{"image": torch.randn(3, 224, 224), "label": 0, "seed": i} for i in range(args.batch)]
    )
    x, masks = batch["images"].to(device), batch["masks"].to(device)
    # allocate gradients and the optimizer state first, so that what the steps add is the activations
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    t0 = time.perf_counter()
    for _ in range(args.steps):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x, masks)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"before_mib": before, "peak_mib": peak, "step_s": (time.perf_counter() - t0) / args.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(MODELS), default="vit_base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off")
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)  # one child's setting
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    results = {}
    for ckpt in (False, True):
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--batch", str(args.batch), "--steps",
               str(args.steps), "--device", args.device, "--amp", args.amp]  # fmt: skip
        cmd += ["--checkpointing"] if ckpt else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[ckpt] = json.loads(out.strip().splitlines()[-1])
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    print(f"{args.model} MaskFeat pre-training step, batch {args.batch}, 224 px, amp {args.amp}, {where}")
    for ckpt, r in results.items():
        act = r["peak_mib"] - r["before_mib"]
        print(f"  activation checkpointing {'on ' if ckpt else 'off'}: peak {r['peak_mib']:.0f} MiB, "
              f"activations {act:.0f} MiB, step {r['step_s']:.2f} s")  # fmt: skip
    off, on = results[False], results[True]
    act_off, act_on = off["peak_mib"] - off["before_mib"], on["peak_mib"] - on["before_mib"]
    print(
        f"SUMMARY checkpointing saves {act_off - act_on:.0f} MiB of activations ({act_on / act_off:.2f}x), "
        f"peak {on['peak_mib'] / off['peak_mib']:.2f}x, step time {on['step_s'] / off['step_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
