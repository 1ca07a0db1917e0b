"""Every GPU figure and every CUDA-path check in one prepared run (at most ``--budget`` seconds, default 440).

    python bench/gpu_check.py                              # on a GPU: the full sizes
    python bench/gpu_check.py --out $OUT --work /tmp/gc    # reports into $OUT, scratch (data, runs) elsewhere
    python bench/gpu_check.py --device cpu --tiny          # the same code paths on the CPU in about a minute
    python3 bench/gpu_check.py --install-missing runs/.gpu-site --wheels .whl --out $OUT   # a bare GPU machine
    make gpu-check                                         # the same, with the Python that has a CUDA torch

What it does, each part with its own time budget (a part that fails or runs out of time is recorded and the next
one runs; the reports are rewritten after every part):

1. ``cli``: the real ``maskfeat`` command on small data it writes itself (JPEG folders, MP4 clips written with
   PyAV): image and video ``pretrain`` and ``finetune`` with bf16 autocast (the default on CUDA) and fused AdamW,
   ``train.amp=off`` (fp32) on the same seed and steps, ``train.compile=true``, ``train.strategy=fsdp`` with one
   process (a no-op in this code: recorded), ``model.grad_checkpointing=true``, and a run killed with SIGKILL after
   its first checkpoint and rerun, compared with the uninterrupted run. Each must finish with finite losses;
   bf16 losses must track the fp32 ones.
2. measurements, each beside its baseline in the same run: ViT-B/16 MaskFeat pre-training step (images/s, MFU from
   FlopCounterMode forward FLOPs x 3) eager and compiled against a plain timm ViT-B/16 classification step on the
   same batch (``vit_step``, ``vit_compiled``); the HOG target's share of the step (CUDA events); host-device
   synchronisations per step of the project's ``train_steps`` (``torch.cuda.set_sync_debug_mode``, ``sync``);
   peak memory at batch 128 bf16 with and without activation checkpointing (``memory``, bench/bench_memory.py);
   MViTv2-S 16x224 clips/s (``mvit``); ``torchvision.io.decode_jpeg`` on the GPU against the CPU loader
   (``jpeg_decode``).
3. ``OUT/gpu_check.json`` (every figure, its baseline, the raw timings) and ``OUT/gpu_check.md`` (a table ready
   for BENCHMARKS.md), plus ``OUT/gpu_check.log`` (the tails of the logs of anything that failed).

Exit status 0 whenever the script itself ran to the end (goals that fail are measurements, not errors).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "bench", ROOT / "src"):  # run from a checkout without installing; bench/ for its helpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402

#: Dense (no sparsity) bf16 tensor-core peak of one NVIDIA H200 SXM, TFLOP/s: NVIDIA's H200 datasheet gives
#: 1,979 TFLOP/s "with sparsity" (the H100 SXM's figure too); dense is half. Override with --peak-tflops.
H200_BF16_DENSE_TFLOPS = 989.5

GOAL_STEP_RATIO = 1.05  # MaskFeat ViT-B/16 step time at most 1.05x the plain timm ViT-B/16 step
GOAL_MFU = 0.45  # model FLOP utilisation of the compiled bf16 MaskFeat step, against the datasheet peak
GOAL_HOG_SHARE = 0.02  # the HOG target's share of the MaskFeat step
GOAL_SYNCS_PER_STEP = 0  # host-device synchronisations per training step (the loss is read once per log interval)
TOL_LOSS_CURVE = 0.05  # bf16 vs fp32 (and compiled vs eager, checkpointed vs not): max relative loss difference
TOL_RESUME = 1e-3  # killed and resumed vs uninterrupted: max relative loss difference after the resume

#: Modules the runs import, and the pip names that bring them (``--install-missing`` installs the missing ones).
REQUIRED = {"omegaconf": "omegaconf", "yaml": "PyYAML", "av": "av", "timm": "timm", "safetensors": "safetensors",
            "skimage": "scikit-image", "tqdm": "tqdm", "PIL": "pillow", "numpy": "numpy",
            "torchvision": "torchvision"}  # fmt: skip

SECTIONS = ["environment", "cli", "vit_step", "vit_compiled", "sync", "memory", "mvit", "jpeg_decode"]
MEASUREMENTS = ["vit_step", "sync", "memory", "mvit", "jpeg_decode", "vit_compiled"]  # run order (priority)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode (full on a GPU, tiny for the CPU smoke run)."""

    vit: str  # the measured image model (timm name)
    vit_size: int
    vit_depth: int | None
    vit_batch: int
    warmup: int  # untimed calls per contender
    calls: int  # calls per timed block
    repeats: int  # timed blocks per contender, interleaved
    matmul_n: int  # side of the reference matmul
    mvit_size: int
    mvit_frames: int
    mvit_batch: int
    memory_model: str  # a bench/bench_memory.py --model name (224 px)
    memory_batch: int
    memory_steps: int
    jpeg_files: int
    jpeg_unique: int
    jpeg_side: int
    sync_batch: int
    sync_steps: int
    images: int  # files in the pre-training image folder (CLI runs and the sync check)
    image_side: int
    cli_size: int  # the CLI runs' model: vit_tiny_patch16_224 of this depth at this size
    cli_depth: int
    cli_batch: int
    cli_steps: int
    cli_ckpt_every: int
    cli_workers: int
    ft_steps: int
    video_steps: int
    # time budgets, seconds: (least worth starting with, most)
    budgets: dict = field(default_factory=dict)


FULL = Sizes(
    vit="vit_base_patch16_224", vit_size=224, vit_depth=None, vit_batch=128, warmup=5, calls=10, repeats=3,
    matmul_n=8192, mvit_size=224, mvit_frames=16, mvit_batch=8, memory_model="vit_base", memory_batch=128,
    memory_steps=2, jpeg_files=512, jpeg_unique=64, jpeg_side=384, sync_batch=16, sync_steps=6, images=256,
    image_side=160, cli_size=96, cli_depth=4, cli_batch=16, cli_steps=24, cli_ckpt_every=4, cli_workers=2,
    ft_steps=6, video_steps=3,
    budgets={"cli": (20, 150), "cli_compile": (60, 240), "vit_step": (30, 120), "sync": (20, 90),
             "memory": (30, 150), "mvit": (20, 90), "jpeg_decode": (15, 60), "vit_compiled": (60, 300)},
)  # fmt: skip
TINY = Sizes(
    vit="vit_tiny_patch16_224", vit_size=64, vit_depth=2, vit_batch=4, warmup=1, calls=2, repeats=2, matmul_n=256,
    mvit_size=64, mvit_frames=4, mvit_batch=1, memory_model="vit_tiny", memory_batch=1, memory_steps=1,
    jpeg_files=16, jpeg_unique=8, jpeg_side=96, sync_batch=4, sync_steps=3, images=64, image_side=64, cli_size=64,
    cli_depth=2, cli_batch=4, cli_steps=10, cli_ckpt_every=2, cli_workers=1, ft_steps=3, video_steps=2,
    budgets={"cli": (10, 90), "cli_compile": (30, 120), "vit_step": (10, 60), "sync": (10, 60), "memory": (10, 60),
             "mvit": (10, 60), "jpeg_decode": (5, 60), "vit_compiled": (10, 90)},
)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN); tuples lists; anything else unknown its str."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, int, str)):
        return x
    return str(x)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (data-loader workers, compile workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def run_logged(cmd: list[str], log_path: Path, timeout: float, env: dict, cwd: Path = ROOT) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group with stdout+stderr to ``log_path``; kill the group at ``timeout``.
    Returns (exit code or None when it timed out, seconds)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.write(f"\n[gpu_check] killed after {timeout:.0f} s (time budget)\n".encode())
            rc = None
    return rc, time.perf_counter() - t0


def child_env(ctx: SimpleNamespace | dict, threads: int | None = None) -> dict:
    """The environment of a child process: the checkout's src/ (and any --install-missing folder) on PYTHONPATH."""
    env = dict(os.environ)
    get = ctx.get if isinstance(ctx, dict) else lambda k, d=None: getattr(ctx, k, d)
    paths = [str(ROOT / "src")] + ([get("site")] if get("site") else [])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["MASKFEAT_CACHE"] = str(Path(get("work")) / "cache")
    env.setdefault("TQDM_DISABLE", "1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def figure(name: str, value: Any, unit: str = "", baseline: Any = None, baseline_name: str | None = None,
           goal: str | None = None, passed: bool | None = None, skipped: str | None = None, note: str | None = None,
           ratio: float | None = None) -> dict:  # fmt: skip
    """One row of the report: a measured ``value`` beside its ``baseline`` (ratio = value / baseline unless
    given), the goal it is held to and whether it met it. ``skipped`` (a reason "skipped: ...") when not measured."""
    if ratio is None and finite(value) and finite(baseline) and baseline != 0:
        ratio = value / baseline
    row = {"name": name, "value": value, "unit": unit, "baseline": baseline, "baseline_name": baseline_name,
           "ratio": ratio, "goal": goal, "pass": passed}  # fmt: skip
    if skipped:
        row["value"], row["skipped"] = None, skipped
    if note:
        row["note"] = note
    return row


class Recorder:
    """A part's result, written (atomically) to its JSON file at every :meth:`save`."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        self.data: dict[str, Any] = {"status": "running", "reason": None, "seconds": None, "figures": [],
                                     "details": {}}  # fmt: skip
        self.t0 = time.perf_counter()

    def fig(self, *args, **kwargs) -> dict:
        row = figure(*args, **kwargs)
        self.data["figures"].append(row)
        self.save()
        return row

    def detail(self, key: str, value: Any) -> None:
        self.data["details"][key] = value
        self.save()

    def skip(self, reason: str) -> None:
        self.data["status"], self.data["reason"] = "skipped", reason

    def save(self) -> None:
        self.data["seconds"] = time.perf_counter() - self.t0
        atomic_write_text(self.path, json.dumps(_jsonable(self.data), indent=1))


# --------------------------------------------------------------------------------------------------------------
# Timing and FLOPs
# --------------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``calls`` back-to-back calls: CUDA events around the block (no
    synchronisation between the calls) on a GPU, the wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def interleaved(fns: dict[str, Callable[[], Any]], warmup: int, calls: int, repeats: int,
                device: torch.device) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per call of each contender: ``warmup`` untimed calls each, then ``repeats`` timed blocks of ``calls``
    calls, the contenders taking turns (so drifts of clocks or load hit all of them alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_calls(fn, calls, device))
    return times


def forward_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of ``fn`` (a forward pass), counted by torch.utils.flop_counter.FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def vit_attention_flops(encoder: torch.nn.Module, batch: int) -> int:
    """FLOPs of the attention products (QK^T and AV) of a timm ViT forward: 4 N^2 D per block and image."""
    n = encoder.patch_embed.num_patches + encoder.num_prefix_tokens
    return 4 * n * n * encoder.embed_dim * len(encoder.blocks) * batch


def model_flops(fn: Callable[[], Any], encoder: torch.nn.Module | None, batch: int) -> dict:
    """Forward FLOPs of ``fn``; where the counter saw no attention kernel (the CPU's fused SDPA has no FLOP
    formula), the attention products of the ViT ``encoder`` are added analytically."""
    total, per_op = forward_flops(fn)
    counted_attention = any("attention" in k for k in per_op)
    added = 0
    if not counted_attention and encoder is not None and hasattr(encoder, "patch_embed"):
        added = vit_attention_flops(encoder, batch)
    return {"forward": total + added, "counted": total, "attention_added": added, "per_op": per_op}


def matmul_tflops(n: int, device: torch.device, calls: int = 10) -> dict:
    """The measured matrix-product rate (bf16 on a GPU, fp32 on the CPU): a reference ceiling for MFU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    sync(device)
    t = statistics.median(time_calls(lambda: a @ b, calls, device) for _ in range(3))
    return {"tflops": 2 * n**3 / t / 1e12, "n": n, "dtype": str(dtype).replace("torch.", "")}


# --------------------------------------------------------------------------------------------------------------
# Measurement parts (each runs in a child process: python gpu_check.py --child NAME[,NAME] --ctx CTX.json)
# --------------------------------------------------------------------------------------------------------------


def _amp(ctx: SimpleNamespace) -> torch.dtype | None:
    return torch.bfloat16 if ctx.amp == "bf16" else None


def _amp_label(ctx: SimpleNamespace) -> str:
    return "bf16" if ctx.amp == "bf16" else "fp32"


def _load_cfg(command: str, overrides: list[str]):
    from maskfeat.config import load_config

    return load_config(command, None, overrides)


def _vit_setup(ctx: SimpleNamespace) -> SimpleNamespace:
    """The project's MaskFeat ViT (builder.build_pretrain_model on the default pre-training config) and a plain timm
    ViT of the same size with a 1000-class head, their (fused on CUDA) AdamW, and one batch with block masks."""
    from maskfeat.builder import build_pretrain_model, mask_collate, token_grid
    from maskfeat.models import create_encoder, encoder_model_args
    from maskfeat.optim import build_optimizer

    S, device = ctx.sizes, ctx.device
    overrides = [f"model.name={S.vit}", f"data.image_size={S.vit_size}", f"device={device.type}"]
    overrides += [f"model.depth={S.vit_depth}"] if S.vit_depth else []
    cfg = _load_cfg("pretrain", overrides)
    torch.manual_seed(0)
    model = build_pretrain_model(cfg)[0].to(device)
    plain = create_encoder(S.vit, encoder_model_args(S.vit_size, depth=S.vit_depth), num_classes=1000).to(device)
    opt_m, opt_p = build_optimizer(model, 1e-4, 0.05), build_optimizer(plain, 1e-4, 0.05)
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.randn(3, S.vit_size, S.vit_size, generator=g), "label": i % 1000, "seed": i}
             for i in range(S.vit_batch)]  # fmt: skip
    batch = mask_collate(cfg, token_grid(cfg, model))(items)
    return SimpleNamespace(
        cfg=cfg, model=model, plain=plain, opt_m=opt_m, opt_p=opt_p, x=batch["images"].to(device),
        masks=batch["masks"].to(device), labels=(torch.arange(S.vit_batch) % 1000).to(device),
        fused=bool(opt_m.defaults.get("fused")),
    )  # fmt: skip


def _flops_both(ctx: SimpleNamespace, v: SimpleNamespace) -> tuple[dict, dict]:
    dtype = _amp(ctx)

    def run_maskfeat():
        with torch.autocast(ctx.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            v.model(v.x, v.masks)

    def run_plain():
        with torch.autocast(ctx.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            v.plain(v.x)

    return model_flops(run_maskfeat, v.model.encoder, len(v.x)), model_flops(run_plain, v.plain, len(v.x))


def _peak(ctx: SimpleNamespace) -> tuple[float | None, str]:
    if ctx.peak_tflops:
        return ctx.peak_tflops, f"--peak-tflops {ctx.peak_tflops:g}"
    if ctx.device.type != "cuda":
        return None, "skipped: no datasheet peak for a CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name(ctx.device)
    note = "H200 SXM dense bf16 datasheet peak"
    if "H200" not in name and "H100" not in name:
        note += f" (this GPU is a {name}: give --peak-tflops)"
    return H200_BF16_DENSE_TFLOPS, note


def _throughput_figures(rec: Recorder, ctx: SimpleNamespace, label: str, times: dict, flops: tuple[dict, dict],
                        matmul: dict | None, baseline_label: str, mfu_goal: bool) -> None:  # fmt: skip
    S = ctx.sizes
    b = S.vit_batch
    t_m, t_p = statistics.median(times["maskfeat"]), statistics.median(times["timm"])
    rec.detail(f"{label}_seconds_per_step", times)
    arch = S.vit.replace("_patch16_224", "").replace("vit_", "ViT-").replace("base", "B").replace("tiny", "Ti")
    rec.fig(
        f"{arch}/16 MaskFeat pre-training step, {label}, {_amp_label(ctx)}, batch {b}",
        t_m * 1e3,
        "ms",
        t_p * 1e3,
        baseline_label,
        goal=f"<= {GOAL_STEP_RATIO}x",
        passed=t_m / t_p <= GOAL_STEP_RATIO,
    )
    rec.fig(f"MaskFeat images/s, {label}", b / t_m, "img/s", b / t_p, baseline_label)
    peak, peak_note = _peak(ctx)
    f_m, f_p = 3 * flops[0]["forward"], 3 * flops[1]["forward"]
    achieved_m, achieved_p = f_m / t_m / 1e12, f_p / t_p / 1e12
    rec.fig(f"achieved TFLOP/s (3x forward FLOPs), {label}", achieved_m, "TFLOP/s", achieved_p, baseline_label)
    goal = f">= {GOAL_MFU:.0%}" if mfu_goal else None
    if peak:
        mfu_m, mfu_p = achieved_m / peak, achieved_p / peak
        rec.fig(f"MFU vs {peak:g} TFLOP/s, {label}", mfu_m, "fraction", mfu_p, baseline_label, goal=goal,
                passed=(mfu_m >= GOAL_MFU) if mfu_goal else None, note=peak_note)  # fmt: skip
    else:
        rec.fig(f"MFU vs datasheet peak, {label}", None, "fraction", goal=goal, skipped=peak_note)
    if matmul:
        rec.fig(f"MFU vs measured {matmul['dtype']} matmul ({matmul['tflops']:.3g} TFLOP/s), {label}",
                achieved_m / matmul["tflops"], "fraction", achieved_p / matmul["tflops"], baseline_label)  # fmt: skip


def part_vit_step(ctx: SimpleNamespace, rec: Recorder) -> None:
    """Eager MaskFeat step vs plain timm step, MFU, and the HOG target's share of the step."""
    from bench_pretrain import classification_step_fn, maskfeat_step_fn

    S, device, dtype = ctx.sizes, ctx.device, _amp(ctx)
    matmul = matmul_tflops(S.matmul_n, device)
    rec.detail("matmul", matmul)
    v = _vit_setup(ctx)
    rec.fig("fused AdamW (build_optimizer on this device)", v.fused, "", goal="fused on CUDA",
            passed=v.fused if device.type == "cuda" else None)  # fmt: skip
    flops = _flops_both(ctx, v)
    rec.detail("forward_flops", {"maskfeat": flops[0], "timm": flops[1]})
    steps = {"maskfeat": maskfeat_step_fn(v.model, v.opt_m, v.x, v.masks, dtype),
             "timm": classification_step_fn(v.plain, v.opt_p, v.x, v.labels, dtype)}  # fmt: skip
    times = interleaved(steps, S.warmup, S.calls, S.repeats, device)
    baseline = f"plain timm {S.vit} classification step, same batch"
    _throughput_figures(rec, ctx, "eager", times, flops, matmul, baseline, mfu_goal=False)

    # The HOG target alone (as the forward calls it, under the same autocast), timed with CUDA events...
    def hog() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            v.model.target(v.x)

    t_step = statistics.median(times["maskfeat"])
    hog_times = interleaved({"hog": hog}, S.warmup, S.calls, S.repeats, device)["hog"]
    t_hog = statistics.median(hog_times)
    rec.detail("hog_seconds", hog_times)
    timer = "CUDA events" if device.type == "cuda" else "wall clock"
    rec.fig(f"HOG target per step ({timer})", t_hog * 1e3, "ms", t_step * 1e3, "the MaskFeat step",
            goal=f"share < {GOAL_HOG_SHARE:.0%}", passed=t_hog / t_step < GOAL_HOG_SHARE)  # fmt: skip

    # ... and by removal: the same step with the target replaced by its precomputed value.
    class Precomputed(torch.nn.Module):
        def __init__(self, value: torch.Tensor, dim: int):
            super().__init__()
            self.value, self.dim = value, dim

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.value

    with torch.no_grad():
        cached = v.model.target(v.x)
    target = v.model.target
    v.model.target = Precomputed(cached, target.dim)
    try:
        without = interleaved({"no_hog": maskfeat_step_fn(v.model, v.opt_m, v.x, v.masks, dtype),
                               }, S.warmup, S.calls, S.repeats, device)["no_hog"]  # fmt: skip
    finally:
        v.model.target = target
    t_without = statistics.median(without)
    rec.detail("step_without_hog_seconds", without)
    rec.fig("HOG share by removal (1 - step without HOG / step)", 1 - t_without / t_step, "fraction",
            goal=f"< {GOAL_HOG_SHARE:.0%}", passed=(1 - t_without / t_step) < GOAL_HOG_SHARE,
            note="noisier than the direct timing: a difference of two step times")  # fmt: skip


def _first_step_seconds(step, device: torch.device) -> float:
    """Wall time of one step, synchronised: the first step of a compiled model is its compile time."""
    t = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t


def part_vit_compiled(ctx: SimpleNamespace, rec: Recorder) -> None:
    """torch.compile'd MaskFeat step vs torch.compile'd plain timm step, MFU (the >= 45% goal)."""
    from bench_pretrain import classification_step_fn, maskfeat_step_fn

    S, device, dtype = ctx.sizes, ctx.device, _amp(ctx)
    rec.detail("backend", ctx.compile_backend)
    v = _vit_setup(ctx)
    flops = _flops_both(ctx, v)
    compiled_m = torch.compile(v.model, backend=ctx.compile_backend)
    step_m = maskfeat_step_fn(v.model, v.opt_m, v.x, v.masks, dtype, forward=compiled_m)
    rec.detail("maskfeat_compile_seconds", _first_step_seconds(step_m, device))
    baseline = f"plain timm {S.vit} step, compiled"
    try:
        compiled_p = torch.compile(v.plain, backend=ctx.compile_backend)
        step_p = classification_step_fn(v.plain, v.opt_p, v.x, v.labels, dtype, forward=compiled_p)
        rec.detail("timm_compile_seconds", _first_step_seconds(step_p, device))
    except Exception as e:  # the baseline failing to compile must not lose the MaskFeat figure
        rec.detail("timm_compile_error", f"{type(e).__name__}: {e}"[:2000])
        step_p = classification_step_fn(v.plain, v.opt_p, v.x, v.labels, dtype)
        baseline = f"plain timm {S.vit} step, EAGER (its compile failed)"
    times = interleaved({"maskfeat": step_m, "timm": step_p}, S.warmup, S.calls, S.repeats, device)
    matmul = ctx.extra.get("matmul")
    label = f"torch.compile ({ctx.compile_backend})"
    _throughput_figures(rec, ctx, label, times, flops, matmul, baseline, mfu_goal=True)


def part_sync(ctx: SimpleNamespace, rec: Recorder) -> None:
    """Host-device synchronisations per step of the project's train_steps (real loader, model, optimizer,
    schedule, clipping, bf16 autocast), counted with torch.cuda.set_sync_debug_mode("warn")."""
    import warnings

    from maskfeat.builder import build_pretrain_model, mask_collate, pretrain_dataset, token_grid
    from maskfeat.data.loader import make_loader
    from maskfeat.engine import Job, LoopOptions, LoopStats, train_steps
    from maskfeat.optim import build_optimizer, build_scheduler
    from maskfeat.pretrain import masked_feature_loss

    S, device = ctx.sizes, ctx.device
    overrides = [f"model.name={S.vit}", f"data.image_size={S.vit_size}", f"data.path={ctx.data['images']}",
                 f"train.batch_size={S.sync_batch}", f"device={device.type}"]  # fmt: skip
    overrides += [f"model.depth={S.vit_depth}"] if S.vit_depth else []
    cfg = _load_cfg("pretrain", overrides)
    dataset = pretrain_dataset(cfg, cfg.data.path)
    torch.manual_seed(0)
    model = build_pretrain_model(cfg)[0].to(device)
    workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 1
    loader, _ = make_loader(dataset, mask_collate(cfg, token_grid(cfg, model)), S.sync_batch, workers, 0, device,
                            train=True)  # fmt: skip
    warm = 2
    total = warm + S.sync_steps
    if len(loader) < total + 1:
        raise RuntimeError(f"the image folder gives {len(loader)} batches, fewer than the {total + 1} needed")
    optimizer = build_optimizer(model, 1e-4, 0.05)
    scheduler = build_scheduler(optimizer, 1000, 10, 1e-6, 1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    opts = LoopOptions(device=device, accum_steps=1, clip_grad=cfg.train.clip_grad, amp_dtype=_amp(ctx),
                       log_every=10**6)  # fmt: skip
    job = Job(model=model, loss_fn=masked_feature_loss, optimizer=optimizer, scheduler=scheduler, loader=loader,
              sampler=None, steps_per_epoch=len(loader), total_steps=total)  # fmt: skip
    stats = LoopStats()
    rows: list[dict] = []
    marks: list[int] = []  # number of sync warnings seen when each batch was handed to the loop
    caught: list = []

    def syncs() -> int:
        return sum("synchroniz" in str(w.message) for w in caught)  # "called a synchronizing CUDA operation"

    def counting(it):
        for batch in it:
            marks.append(syncs())
            yield batch

    class Rows:  # the loop's StepLog: keep the rows
        def write(self, row: dict, bad_files: list) -> None:
            rows.append(row)

    batches = counting(loader)  # one pass over the loader, continued by the second call

    def run(step: int, stop_at: int) -> int:
        return train_steps(job, batches, scaler, opts, 0, step, stop_at, stats, Rows())[0]

    cuda = device.type == "cuda"
    step = run(0, warm)  # warm-up: cuDNN / cuBLAS handles, the allocator, the loader's workers
    marks.clear()
    with warnings.catch_warnings(record=True) as caught_now:
        warnings.simplefilter("always")
        caught = caught_now
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            step = run(step, total)
            marks.append(syncs())  # the last step's syncs: its loss read-back at the stop
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
            sync(device)
    where = [f"{Path(w.filename).name}:{w.lineno}: {str(w.message)[:80]}" for w in caught if "synchroniz" in
             str(w.message)]  # fmt: skip
    # syncs between handing batch i and batch i+1 to the loop belong to step i; the last step reads the losses back
    per_step = [b - a for a, b in zip(marks, marks[1:])]
    steady = per_step[:-1]  # all but the last step (its logging / checkpoint flush syncs by design)
    rec.detail("steps", step)
    rec.detail("syncs_per_step", per_step)
    rec.detail("sync_locations", sorted(set(where)))
    rec.detail("rows", rows)
    finite_losses = bool(rows) and all(math.isfinite(r["loss"]) for r in rows)
    rec.fig(f"train_steps: {step} steps, finite losses", finite_losses, "", passed=finite_losses)
    if len(per_step) != S.sync_steps:
        raise RuntimeError(f"counted {len(per_step)} steps, expected {S.sync_steps}")
    if not cuda:
        rec.fig("host-device syncs per step", None, "syncs", goal="0", skipped="skipped: needs CUDA")
        return
    worst = max(steady) if steady else None
    rec.fig(f"host-device syncs per step (train_steps, {len(steady)} steady steps)", worst, "syncs",
            goal=f"{GOAL_SYNCS_PER_STEP}", passed=worst is not None and worst <= GOAL_SYNCS_PER_STEP,
            note=f"{len(where)} in all; the last step's {per_step[-1]} are the loss read-back")  # fmt: skip


def part_memory(ctx: SimpleNamespace, rec: Recorder) -> None:
    """Peak memory of a pre-training step with and without activation checkpointing: bench/bench_memory.py's own
    child mode, one fresh process per setting (torch.cuda.max_memory_allocated on a GPU, peak RSS on the CPU)."""
    S = ctx.sizes
    results = {}
    for ckpt in (False, True):
        cmd = [sys.executable, str(ROOT / "bench" / "bench_memory.py"), "--child", "--model", S.memory_model,
               "--batch", str(S.memory_batch), "--steps", str(S.memory_steps), "--device", ctx.device.type,
               "--amp", ctx.amp]  # fmt: skip
        cmd += ["--checkpointing"] if ckpt else []
        log = Path(ctx.work) / "logs" / f"memory_ckpt_{'on' if ckpt else 'off'}.log"
        left = ctx.deadline - time.time() - 5
        rc, secs = run_logged(cmd, log, min(left, 120), child_env(ctx, ctx.threads))
        if rc != 0:
            raise RuntimeError(f"bench_memory.py {'timed out' if rc is None else f'exited {rc}'}: {_tail(log, 8)}")
        results[ckpt] = json.loads(log.read_text().strip().splitlines()[-1])
        rec.detail(f"checkpointing_{'on' if ckpt else 'off'}", results[ckpt])
    off, on = results[False], results[True]
    what = "torch.cuda.max_memory_allocated" if ctx.device.type == "cuda" else "peak RSS (CPU)"
    label = f"{S.memory_model} batch {S.memory_batch} {_amp_label(ctx)}"
    rec.fig(f"peak memory, activation checkpointing on, {label}", on["peak_mib"], "MiB", off["peak_mib"],
            "checkpointing off", note=what)  # fmt: skip
    rec.fig(
        f"activation memory (peak - before the steps), checkpointing on, {label}",
        on["peak_mib"] - on["before_mib"],
        "MiB",
        off["peak_mib"] - off["before_mib"],
        "checkpointing off",
    )
    rec.fig(f"step time, checkpointing on, {label}", on["step_s"] * 1e3, "ms", off["step_s"] * 1e3,
            "checkpointing off")  # fmt: skip


def part_mvit(ctx: SimpleNamespace, rec: Recorder) -> None:
    """MViTv2-S MaskFeat pre-training step (cube masks, HOG of 2-frame patches) clips/s against a plain MViTv2-S
    classification step with the same backbone on the same clips."""
    from bench_pretrain import classification_step_fn, maskfeat_step_fn

    from maskfeat.builder import build_pretrain_model, mask_collate, token_grid
    from maskfeat.models.registry import create_encoder
    from maskfeat.optim import build_optimizer

    S, device, dtype = ctx.sizes, ctx.device, _amp(ctx)
    cfg = _load_cfg("pretrain", ["model.name=mvit_v2_s", f"data.image_size={S.mvit_size}",
                                 f"video.num_frames={S.mvit_frames}", f"device={device.type}"])  # fmt: skip
    torch.manual_seed(0)
    model, meta = build_pretrain_model(cfg)
    model.to(device)
    plain = create_encoder("mvit_v2_s", meta["model_args"], num_classes=400).to(device)
    opt_m, opt_p = build_optimizer(model, 1e-4, 0.05), build_optimizer(plain, 1e-4, 0.05)
    g = torch.Generator().manual_seed(0)
    shape = (3, S.mvit_frames, S.mvit_size, S.mvit_size)
    items = [{"image": torch.randn(*shape, generator=g), "label": i, "seed": i} for i in range(S.mvit_batch)]
    batch = mask_collate(cfg, token_grid(cfg, model))(items)
    x, masks = batch["images"].to(device), batch["masks"].to(device)
    labels = torch.arange(S.mvit_batch, device=device) % 400
    times = interleaved({"maskfeat": maskfeat_step_fn(model, opt_m, x, masks, dtype),
                         "plain": classification_step_fn(plain, opt_p, x, labels, dtype)},
                        S.warmup, S.calls, S.repeats, device)  # fmt: skip
    rec.detail("seconds_per_step", times)
    t_m, t_p = statistics.median(times["maskfeat"]), statistics.median(times["plain"])
    base = "plain MViTv2-S classification step, same stride-16 backbone"
    label = f"{S.mvit_frames}x{S.mvit_size}, batch {S.mvit_batch}, {_amp_label(ctx)}"
    rec.fig(f"MViTv2-S MaskFeat pre-training clips/s, {label}", S.mvit_batch / t_m, "clips/s",
            S.mvit_batch / t_p, base)  # fmt: skip
    rec.fig(f"MViTv2-S MaskFeat step, {label}", t_m * 1e3, "ms", t_p * 1e3, base)


def part_jpeg_decode(ctx: SimpleNamespace, rec: Recorder) -> None:
    """torchvision.io.decode_jpeg on the GPU (batched) against the CPU: one thread's decode_jpeg, and the project's
    loader (decode + RandomResizedCrop + flip + normalise in min(8, cores) workers, batches moved to the device)."""
    from torchvision.io import decode_jpeg, read_file

    from maskfeat.data import ImageDataset, pretrain_transform, sample_image_folder
    from maskfeat.data.collate import MaskCollator
    from maskfeat.data.loader import make_loader

    S, device = ctx.sizes, ctx.device
    folder = sample_image_folder(root=str(Path(ctx.work) / "data" / "jpeg"), num_images=S.jpeg_unique,
                                 size=S.jpeg_side)  # fmt: skip
    unique = sorted(str(p) for p in Path(folder).glob("*.jpg"))
    files = (unique * (S.jpeg_files // len(unique) + 1))[: S.jpeg_files]
    datas = [read_file(f) for f in files]
    side = S.vit_size

    # the CPU loader of the project, as pre-training runs it
    workers = min(8, os.cpu_count() or 1)
    dataset = ImageDataset(folder, pretrain_transform(side), files=files)
    batch_size = min(32, len(files) // 2)
    loader, _ = make_loader(dataset, MaskCollator("block", (side // 16, side // 16), 0.4), batch_size, workers, 0,
                            device, train=True)  # fmt: skip
    n_loader = len(loader) * batch_size

    def loader_pass() -> None:
        for batch in loader:
            batch["images"].to(device, non_blocking=True)
        sync(device)

    loader_pass()  # starts the (persistent) workers
    t = time.perf_counter()
    loader_pass()
    loader_rate = n_loader / (time.perf_counter() - t)
    rec.detail("loader", {"workers": workers, "images": n_loader, "img_per_s": loader_rate})

    def cpu_decode() -> None:
        for d in datas:
            decode_jpeg(d)

    torch.set_num_threads(1)
    cpu_rate = len(datas) / statistics.median(interleaved({"cpu": cpu_decode}, 1, 1, 3, torch.device("cpu"))["cpu"])
    torch.set_num_threads(ctx.threads)
    rec.detail("cpu_decode_1_thread_img_per_s", cpu_rate)
    rec.fig(f"the project's CPU loader (decode + crop + flip + normalise, {workers} workers), img/s", loader_rate,
            "img/s", cpu_rate, "CPU decode_jpeg alone, 1 thread")  # fmt: skip
    if device.type != "cuda":
        rec.fig("GPU decode_jpeg (batched), img/s", None, "img/s", cpu_rate, "CPU decode_jpeg, 1 thread",
                skipped="skipped: needs CUDA")  # fmt: skip
        rec.fig("GPU decode + resize + normalise, img/s", None, "img/s", loader_rate,
                f"the project's CPU loader, {workers} workers", skipped="skipped: needs CUDA")  # fmt: skip
        return
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255

    def gpu_decode() -> list:
        return decode_jpeg(datas, device=device)

    def gpu_pipeline() -> torch.Tensor:
        x = torch.stack(gpu_decode()).float()
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        return (x - mean) / std

    times = interleaved({"decode": gpu_decode, "pipeline": gpu_pipeline}, 1, 1, 3, device)
    rec.detail("gpu_seconds_per_batch", times)
    n = len(datas)
    rec.fig(f"GPU decode_jpeg (batched, {n} JPEGs {S.jpeg_side}px), img/s", n / statistics.median(times["decode"]),
            "img/s", cpu_rate, "CPU decode_jpeg, 1 thread")  # fmt: skip
    rec.fig(f"GPU decode + resize to {side} + normalise, img/s", n / statistics.median(times["pipeline"]), "img/s",
            loader_rate, f"the project's CPU loader, {workers} workers")  # fmt: skip


PART_FUNCTIONS: dict[str, Callable[[SimpleNamespace, Recorder], None]] = {
    "vit_step": part_vit_step,
    "vit_compiled": part_vit_compiled,
    "sync": part_sync,
    "memory": part_memory,
    "mvit": part_mvit,
    "jpeg_decode": part_jpeg_decode,
}


def child_main(names: list[str], ctx_path: str) -> int:
    """Run measurement parts in this process, one after the other, each recorded on its own (a failure is written
    to its JSON and the next part runs)."""
    raw = json.loads(Path(ctx_path).read_text())
    ctx = SimpleNamespace(**raw)
    ctx.sizes = Sizes(**raw["sizes"])
    ctx.device = torch.device(raw["device"])
    ctx.extra = {}
    try:  # the matmul rate measured by vit_step (a reference for the compiled MFU, in another process on a GPU)
        ctx.extra["matmul"] = json.loads((Path(ctx.parts_dir) / "vit_step.json").read_text())["details"]["matmul"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    torch.set_num_threads(ctx.threads)
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    failed = 0
    for name in names:
        rec = Recorder(Path(ctx.parts_dir) / f"{name}.json", name)
        if time.time() > ctx.deadline - 5:
            rec.skip("skipped: out of time budget")
            rec.save()
            continue
        try:
            PART_FUNCTIONS[name](ctx, rec)
            if rec.data["status"] == "running":
                rec.data["status"] = "ok"
        except Exception as e:
            failed += 1
            rec.data["status"] = "failed"
            rec.data["reason"] = f"{type(e).__name__}: {str(e)[:500]}"
            rec.data["traceback"] = traceback.format_exc()[-4000:]
            print(rec.data["traceback"], file=sys.stderr)
        finally:
            if "matmul" in rec.data["details"]:
                ctx.extra["matmul"] = rec.data["details"]["matmul"]
            rec.save()
            if ctx.device.type == "cuda":
                try:
                    torch.cuda.empty_cache()
                except Exception:  # a sticky CUDA error: the next part will fail and say so
                    pass
    return 0


# --------------------------------------------------------------------------------------------------------------
# The parent: data, tasks (CLI runs and measurement children), scheduling under the budget, reports
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Task:
    name: str
    run: Callable[[float], dict]  # (timeout seconds) -> result
    budget: tuple[float, float]  # (least worth starting with, most)
    after: list[str] = field(default_factory=list)
    exclusive: bool = False  # run alone (timed measurements on the GPU)
    result: dict | None = None
    parts: list[str] = field(default_factory=list)  # the measurement parts it runs


class Scheduler:
    """Runs tasks in list order, ``jobs`` at a time; an exclusive task runs alone. Each task gets at most its
    budget and never more than what is left of the whole run's; one whose deadline cannot be met is skipped."""

    def __init__(self, tasks: list[Task], jobs: int, deadline: float, on_done: Callable[[], None]):
        self.tasks, self.jobs, self.deadline, self.on_done = tasks, jobs, deadline, on_done

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self) -> None:
        pending = list(self.tasks)
        running: dict[str, tuple[threading.Thread, Task]] = {}
        by_name = {t.name: t for t in self.tasks}
        last_refresh = time.time()
        while pending or running:
            for name, (thread, _task) in list(running.items()):
                if not thread.is_alive():
                    del running[name]
                    self.on_done()
            for task in list(pending):
                deps = [by_name[d] for d in task.after if d in by_name]
                if any(d.result is None for d in deps):
                    continue  # a dependency still pending or running
                bad = [d.name for d in deps if d.result.get("status") != "ok"]
                if bad:
                    task.result = {"status": "skipped", "reason": f"skipped: needs {', '.join(bad)}, which did not "
                                   "succeed"}  # fmt: skip
                    pending.remove(task)
                    continue
                if task.exclusive and running:
                    break  # wait for the others to finish; nothing later jumps ahead of it
                if any(t.exclusive for _, t in running.values()) or len(running) >= self.jobs:
                    break
                timeout = min(task.budget[1], self.left() - 10)
                pending.remove(task)
                if timeout < task.budget[0]:
                    task.result = {
                        "status": "skipped",
                        "reason": f"skipped: out of time budget "
                        f"({max(self.left() - 10, 0):.0f} s usable, needs {task.budget[0]:.0f})",
                    }
                    continue
                thread = threading.Thread(target=self._run_one, args=(task, timeout), daemon=True)
                running[task.name] = (thread, task)
                thread.start()
                print(f"[gpu_check] {time.strftime('%H:%M:%S')} start {task.name} (budget {timeout:.0f} s)",
                      flush=True)  # fmt: skip
            if time.time() - last_refresh > 5:
                self.on_done()
                last_refresh = time.time()
            time.sleep(0.05)
        self.on_done()

    @staticmethod
    def _run_one(task: Task, timeout: float) -> None:
        t0 = time.perf_counter()
        try:
            result = task.run(timeout)
        except Exception as e:  # a bug in the task's own code: recorded, the others go on
            result = {"status": "failed", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result.setdefault("seconds", time.perf_counter() - t0)
        task.result = result
        print(f"[gpu_check] {time.strftime('%H:%M:%S')} done  {task.name}: {result.get('status')} "
              f"{result.get('reason') or ''} ({result['seconds']:.0f} s)", flush=True)  # fmt: skip


def read_rows(run_dir: Path) -> dict[int, dict]:
    """The training rows of a run's metrics.jsonl by step (the last one written for a step wins)."""
    rows: dict[int, dict] = {}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row and "lr" in row:
            rows[int(row["step"])] = row
    return rows


def max_rel_diff(a: dict[int, dict], b: dict[int, dict], after: int = 0) -> tuple[float | None, int]:
    """Max over the common steps (> ``after``) of |loss_a - loss_b| / |loss_b|, and the number of steps compared."""
    steps = sorted(s for s in set(a) & set(b) if s > after)
    diffs = []
    for s in steps:
        la, lb = a[s]["loss"], b[s]["loss"]
        if la is None or lb is None or not (math.isfinite(la) and math.isfinite(lb)):
            return float("inf"), len(steps)
        diffs.append(abs(la - lb) / max(abs(lb), 1e-12))
    return (max(diffs) if diffs else None), len(steps)


class Check:
    """The whole run: options, folders, the data it writes, the tasks, the report."""

    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args, self.argv = args, argv
        self.t0 = time.time()
        self.deadline = self.t0 + args.budget
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and self.device.index is None:  # torch.cuda.set_device wants the index
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.sizes = TINY if args.tiny else FULL
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = Path(args.out or ROOT / "runs" / "gpu_check" / stamp).resolve()
        self.work = Path(args.work or tempfile.mkdtemp(prefix=f"gpu_check_{stamp}_")).resolve()
        self.parts_dir = self.work / "parts"
        self.out.mkdir(parents=True, exist_ok=True)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        # measurements in bf16 autocast on a GPU; in fp32 on the CPU (bf16 matmuls are emulated there: minutes),
        # where the CLI runs cover the bf16 path
        self.amp = "bf16" if self.device.type == "cuda" else "off"
        self.compile_backend = args.compile_backend or ("inductor" if self.device.type == "cuda" else "eager")
        self.jobs = args.jobs or (4 if self.device.type == "cuda" else 3)
        self.sections: dict[str, dict] = {}
        self.data: dict[str, str] = {}
        self.data_error: str | None = None
        self.log_lines: list[str] = []
        self.lock = threading.Lock()

    # ---- setup ----
    def environment(self) -> dict:
        env: dict[str, Any] = {
            "date": _now(),
            "command": shlex.join(["python", "bench/gpu_check.py", *self.argv]),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(self.device),
            "mode": "tiny" if self.args.tiny else "full",
            "budget_s": self.args.budget,
            "work": str(self.work),
            "load": _loadavg(),
            "packages": {pkg: _version(mod, pkg) for mod, pkg in REQUIRED.items()},
            "installed_here": self.args.installed,
        }
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                       nvidia_smi=_nvidia_smi())  # fmt: skip
        env["missing"] = [pkg for mod, pkg in REQUIRED.items() if env["packages"][pkg] is None]
        return env

    def make_data(self) -> None:
        """Small real data for the CLI runs: JPEG crops of scikit-image's photos, labeled folders, MP4 clips."""
        from maskfeat.data.sample import sample_image_folder, sample_labeled_folder, sample_video_folder

        S, d = self.sizes, self.work / "data"
        self.data["images"] = sample_image_folder(root=str(d / "images"), num_images=S.images, size=S.image_side)
        for split, k in (("train", 4), ("val", 2)):
            self.data[f"labeled_{split}"] = sample_labeled_folder(
                root=str(d / f"labeled_{split}"), split=split, images_per_class=k, size=S.image_side
            )
        if importlib.util.find_spec("av") is not None:
            for split, k in (("train", 2), ("val", 1)):
                self.data[f"videos_{split}"] = sample_video_folder(
                    root=str(d / f"videos_{split}"), split=split, clips_per_class=k, frames=20, size=64
                )

    # ---- CLI runs ----
    def cli_common(self) -> list[str]:
        S = self.sizes
        return [f"device={self.device.type}", "seed=0", f"data.num_workers={S.cli_workers}", "train.warmup_epochs=0",
                "train.log_every=1"]  # fmt: skip

    def image_pretrain_args(self, run: str, extra: list[str]) -> list[str]:
        S = self.sizes
        return [
            "pretrain",
            *self.cli_common(),
            f"data.path={self.data['images']}",
            f"data.image_size={S.cli_size}",
            "model.name=vit_tiny_patch16_224",
            f"model.depth={S.cli_depth}",
            f"train.batch_size={S.cli_batch}",
            "train.epochs=2",
            "train.lr=1e-3",
            f"train.max_steps={S.cli_steps}",
            f"train.checkpoint_every={S.cli_ckpt_every}",
            f"output_dir={self.work / 'cli' / run}",
            *extra,
        ]

    def cli_task(self, name: str, argv: list[str], budget: str = "cli", after: list[str] | None = None) -> Task:
        run_dir = self.work / "cli" / name

        def run(timeout: float) -> dict:
            return self.run_cli(name, argv, run_dir, timeout)

        return Task(name=f"cli:{name}", run=run, budget=self.sizes.budgets[budget], after=after or [])

    def run_cli(self, name: str, argv: list[str], run_dir: Path, timeout: float) -> dict:
        log = self.work / "logs" / f"cli_{name}.log"
        rc, secs = run_logged([sys.executable, "-m", "maskfeat", *argv], log, timeout, self.env(threads=True))
        rows = read_rows(run_dir)
        result = {"rc": rc, "seconds": secs, "log": str(log), "steps": len(rows), "run_dir": str(run_dir)}
        if rc != 0:
            result.update(status="failed", reason="timed out" if rc is None else f"exit status {rc}",
                          tail=_tail(log))  # fmt: skip
            self.log(f"cli {name} failed ({result['reason']}), the end of {log}:\n{result['tail']}")
        else:
            result["status"] = "ok"
        return result

    def env(self, threads: bool = False) -> dict:
        n = None
        if threads and self.device.type != "cuda":
            n = max(1, (os.cpu_count() or 1) // self.jobs)
        return child_env({"site": self.args.site, "work": str(self.work)}, threads=n)

    def resume_task(self, name: str, argv: list[str]) -> Task:
        """Start the run, SIGKILL it (and its loader workers) once its first checkpoint is on disk, rerun it."""
        run_dir = self.work / "cli" / name
        ckpt = run_dir / "checkpoint-last.pt"

        def run(timeout: float) -> dict:
            t_end = time.time() + timeout
            log = self.work / "logs" / f"cli_{name}_killed.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as f:
                cmd = [sys.executable, "-m", "maskfeat", *argv]
                f.write(f"$ {shlex.join(cmd)}\n".encode())
                f.flush()
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env(threads=True),
                                        cwd=ROOT, start_new_session=True)  # fmt: skip
                killed = False
                while time.time() < t_end and proc.poll() is None:
                    if ckpt.is_file():
                        _kill_group(proc)
                        killed = True
                        break
                    time.sleep(0.005)
                if proc.poll() is None:
                    _kill_group(proc)
            killed_at = max(read_rows(run_dir), default=0)
            if not killed:
                return {"status": "failed", "reason": "the run ended (or ran out of time) before its first "
                        f"checkpoint could be killed (exit {proc.returncode})", "tail": _tail(log)}  # fmt: skip
            result = self.run_cli(f"{name}_resumed", argv, run_dir, max(t_end - time.time(), 1))
            text = Path(result["log"]).read_text(errors="replace")
            resumed_from = None
            for line in text.splitlines():
                if "resuming from" in line and "at step" in line:
                    try:
                        resumed_from = int(line.split("at step")[1].split("/")[0])
                    except (ValueError, IndexError):
                        pass
            result.update(killed_after_step=killed_at, resumed_from=resumed_from)
            if result["status"] == "ok" and resumed_from is None:
                result.update(status="failed", reason="the rerun did not resume from the checkpoint")
            return result

        return Task(name=f"cli:{name}", run=run, budget=self.sizes.budgets["cli"])

    def cli_tasks(self) -> list[Task]:
        S = self.sizes
        cuda = self.device.type == "cuda"
        amp_default = "train.amp=auto" if cuda else "train.amp=bf16"  # auto = bf16 on CUDA
        tasks = []

        def image(run: str, *extra: str) -> Task:
            return self.cli_task(run, self.image_pretrain_args(run, [amp_default, *extra]))

        if cuda:  # first: it takes longest (compiling)
            tasks.append(image("pretrain_compile", "train.compile=true"))
            tasks[-1].budget = self.sizes.budgets["cli_compile"]
        tasks += [
            image("pretrain_bf16"),
            # quoted: YAML reads a bare off as False (the CLI then refuses train.amp=off); the later train.amp wins
            image("pretrain_fp32", "train.amp='off'"),
            image("pretrain_fsdp1", "train.strategy=fsdp"),
            image("pretrain_gradckpt", "model.grad_checkpointing=true"),
            self.resume_task("pretrain_resume", self.image_pretrain_args("pretrain_resume", [amp_default])),
        ]
        enc = self.work / "cli" / "pretrain_bf16" / "encoder.safetensors"
        ft = ["finetune", *self.cli_common(), f"data.path={self.data['labeled_train']}",
              f"data.val_path={self.data['labeled_val']}", f"data.image_size={S.cli_size}",
              "data.auto_augment=rand-m9-mstd0.5", "model.name=vit_tiny_patch16_224", f"model.depth={S.cli_depth}",
              f"model.checkpoint={enc}", "train.batch_size=8", "train.epochs=1", f"train.max_steps={S.ft_steps}",
              amp_default, f"output_dir={self.work / 'cli' / 'finetune_image'}"]  # fmt: skip
        tasks.append(self.cli_task("finetune_image", ft, after=["cli:pretrain_bf16"]))
        if "videos_train" in self.data:
            video = ["model.name=vit_s", "model.embed_dim=96", "model.depth=2", "model.num_heads=3",
                     "data.image_size=64", "video.num_frames=8", "video.frame_stride=2", "video.short_side=[72,88]",
                     "train.batch_size=4", "train.epochs=1", f"train.max_steps={S.video_steps}",
                     amp_default]  # fmt: skip
            tasks.append(self.cli_task("video_pretrain", [
                "pretrain", *self.cli_common(), f"data.path={self.data['videos_train']}", *video, "train.lr=1e-3",
                f"output_dir={self.work / 'cli' / 'video_pretrain'}"]))  # fmt: skip
            venc = self.work / "cli" / "video_pretrain" / "encoder.safetensors"
            tasks.append(self.cli_task("video_finetune", [
                "finetune", *self.cli_common(), f"data.path={self.data['videos_train']}",
                f"data.val_path={self.data['videos_val']}", *video, "video.num_clips=1", "video.num_crops=1",
                "data.auto_augment=rand-m9-mstd0.5", f"model.checkpoint={venc}",
                f"output_dir={self.work / 'cli' / 'video_finetune'}"], after=["cli:video_pretrain"]))  # fmt: skip
        return tasks

    def cli_section(self, tasks: list[Task]) -> dict:
        """Figures of the CLI runs: each finished with finite losses; the loss curves compared."""
        if self.data_error:
            return {"status": "failed", "reason": f"could not write the test data: {self.data_error}", "figures": []}
        S = self.sizes
        res = {t.name.removeprefix("cli:"): t.result for t in tasks}
        figs, details = [], {}
        rows = {n: read_rows(Path(r["run_dir"])) if r and r.get("run_dir") else {} for n, r in res.items()}
        expected = {"finetune_image": S.ft_steps, "video_pretrain": S.video_steps, "video_finetune": S.video_steps}
        for name, r in res.items():
            if r is None:
                figs.append(figure(f"maskfeat {name}", None, skipped="skipped: not run (out of time budget)"))
                continue
            details[name] = {k: v for k, v in r.items() if k != "tail"}
            if r.get("status") == "skipped":
                figs.append(figure(f"maskfeat {name}: finite losses", None, skipped=r["reason"]))
                continue
            losses = [rw["loss"] for _, rw in sorted(rows[name].items())]
            want = expected.get(name, S.cli_steps)
            ok = r.get("status") == "ok" and len(losses) == want and all(finite(x) for x in losses)
            note = None if ok else (r.get("reason") or f"{len(losses)} of {want} steps logged")
            figs.append(figure(f"maskfeat {name}: {want} steps, finite losses (last loss)",
                               losses[-1] if losses and finite(losses[-1]) else None, "loss",
                               goal="exit 0, finite", passed=ok, note=note))  # fmt: skip
        ref = rows.get("pretrain_bf16", {})

        def compare(name: str, label: str, tol: float, other: str = "pretrain_bf16") -> None:
            r = res.get(name)
            if not r or r.get("status") != "ok" or not rows.get(other):
                reason = (r or {}).get("reason") or "the run did not finish"
                figs.append(figure(label, None, skipped=reason if reason.startswith("skipped:") else
                                   f"skipped: {name} failed ({reason})"))  # fmt: skip
                return
            d, n = max_rel_diff(rows[name], rows[other])
            figs.append(figure(f"{label} ({n} steps)", d, "max rel. diff", goal=f"<= {tol:g}",
                               passed=d is not None and d <= tol))  # fmt: skip

        compare("pretrain_fp32", "bf16 vs fp32 loss curves", TOL_LOSS_CURVE)
        if "pretrain_compile" in res:
            compare("pretrain_compile", "train.compile=true vs eager loss curves", TOL_LOSS_CURVE)
        else:
            figs.append(figure("train.compile=true vs eager loss curves", None,
                               skipped="skipped: needs CUDA (inductor compiles for minutes on this CPU; the compiled "
                               "step runs with the eager backend in vit_compiled)"))  # fmt: skip
        compare("pretrain_gradckpt", "grad_checkpointing vs not, loss curves", TOL_LOSS_CURVE)
        r = res.get("pretrain_fsdp1")
        if r and r.get("status") == "ok":
            noop = "nothing to shard" in Path(r["log"]).read_text(errors="replace")
            compare("pretrain_fsdp1", "train.strategy=fsdp (1 process) vs ddp loss curves", TOL_LOSS_CURVE)
            note = ("shard_model() shards only with several processes; a 2-process run needs 2 GPUs (rank r trains "
                    "on cuda:r, and NCCL refuses two ranks on one GPU)")  # fmt: skip
            value = "no-op (trained unsharded)" if noop else "sharded"
            figs.append(figure("train.strategy=fsdp with one process", value, note=note))
        r = res.get("pretrain_resume")
        if r and r.get("status") == "ok":
            after = r.get("resumed_from") or 0
            d, n = max_rel_diff(rows["pretrain_resume"], ref, after=after)
            w = _weights_diff(Path(r["run_dir"]) / "encoder.safetensors",
                              self.work / "cli" / "pretrain_bf16" / "encoder.safetensors")  # fmt: skip
            figs.append(
                figure(
                    f"SIGKILL after step {r.get('killed_after_step')}, resumed from {after}: loss vs "
                    f"uninterrupted ({n} steps after)",
                    d,
                    "max rel. diff",
                    goal=f"<= {TOL_RESUME:g}",
                    passed=d is not None and d <= TOL_RESUME,
                    note=f"final encoder weights max abs diff {w:.3g}" if finite(w) else None,
                )
            )
            details["pretrain_resume"]["weights_max_abs_diff"] = w
        else:
            figs.append(figure("resume after SIGKILL", None, skipped=f"skipped: {(r or {}).get('reason')}")
                        if not r or r.get("status") == "skipped" else
                        figure("resume after SIGKILL", None, passed=False, note=r.get("reason")))  # fmt: skip
        for name in ("finetune_image", "video_finetune"):
            val = _val_rows(Path(res[name]["run_dir"])) if res.get(name) and res[name].get("run_dir") else []
            if val:
                figs.append(figure(f"maskfeat {name}: evaluated top-1 (tiny data)", val[-1].get("top1"), "%"))
        if "videos_train" not in self.data:
            figs.append(
                figure(
                    "video pretrain / finetune",
                    None,
                    skipped="skipped: PyAV (av) is not installed (make gpu-check installs it)",
                )
            )
        status = "ok" if all(t.result is not None and t.result.get("status") in ("ok", "skipped") for t in tasks) \
            else "failed"  # fmt: skip
        reason = None if status == "ok" else "some runs failed: see the figures and gpu_check.log"
        return {"status": status, "reason": reason, "figures": figs, "details": details}

    # ---- measurement children ----
    def ctx_file(self) -> Path:
        ctx = {"device": str(self.device), "sizes": asdict(self.sizes), "amp": self.amp, "work": str(self.work),
               "parts_dir": str(self.parts_dir), "peak_tflops": self.args.peak_tflops,
               "compile_backend": self.compile_backend, "deadline": self.deadline, "data": self.data,
               "site": self.args.site, "threads": self.threads()}  # fmt: skip
        path = self.work / "ctx.json"
        atomic_write_text(path, json.dumps(ctx, indent=1))
        return path

    def threads(self) -> int:
        if self.device.type == "cuda":
            return min(8, os.cpu_count() or 1)
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def measure_task(self, names: list[str], exclusive: bool) -> Task:
        ctx_path = self.ctx_file()
        lo = sum(self.sizes.budgets[n][0] for n in names) if len(names) == 1 else self.sizes.budgets[names[0]][0]
        hi = sum(self.sizes.budgets[n][1] for n in names)

        def run(timeout: float) -> dict:
            log = self.work / "logs" / f"part_{'_'.join(names)}.log"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(names), "--ctx", str(ctx_path)]
            rc, secs = run_logged(cmd, log, timeout, self.env())
            failed = [n for n in names if _part_status(self.parts_dir / f"{n}.json") != "ok"]
            if rc is None or rc != 0 or failed:
                self.log(f"measurement {','.join(names)}: rc {rc}\n{_tail(log, 40)}")
            for n in names:
                path = self.parts_dir / f"{n}.json"
                if path.is_file() and _part_status(path) == "running":  # killed in the middle of this part
                    part = json.loads(path.read_text())
                    part.update(status="failed", reason=("timed out: killed at the end of its time budget" if rc is
                                None else f"the process died (exit {rc}): {_tail(log, 3)}"))  # fmt: skip
                    atomic_write_text(path, json.dumps(part, indent=1))
                elif not path.is_file():  # never reached
                    part = {"status": "skipped" if rc is None else "failed", "figures": [], "details": {},
                            "reason": "skipped: out of time budget (not reached)" if rc is None else
                            f"the process died before this part (exit {rc}): {_tail(log, 3)}"}  # fmt: skip
                    atomic_write_text(path, json.dumps(part, indent=1))
            return {"status": "ok" if rc == 0 else "failed", "rc": rc, "seconds": secs, "log": str(log)}

        return Task(name="measure:" + ",".join(names), run=run, budget=(lo, hi), exclusive=exclusive, parts=names)

    # ---- report ----
    def log(self, text: str) -> None:
        with self.lock:
            self.log_lines.append(f"[{time.strftime('%H:%M:%S')}] {text}")

    def collect(self) -> None:
        for name in MEASUREMENTS:
            path = self.parts_dir / f"{name}.json"
            if path.is_file():
                try:
                    self.sections[name] = json.loads(path.read_text())
                except ValueError:
                    pass

    def write_report(self) -> None:
        with self.lock:
            self.collect()
            sections = {}
            for name in SECTIONS:
                sections[name] = self.sections.get(name) or {"status": "skipped", "reason": "skipped: not run yet "
                                                              "(or out of time budget)", "figures": []}  # fmt: skip
            report = {"meta": self.sections.get("environment", {}), "sections": sections,
                      "elapsed_s": time.time() - self.t0, "goals": GOALS}  # fmt: skip
            atomic_write_text(self.out / "gpu_check.json", json.dumps(_jsonable(report), indent=1))
            atomic_write_text(self.out / "gpu_check.md", markdown(report))
            atomic_write_text(self.out / "gpu_check.log", "\n".join(self.log_lines) + "\n")

    def run(self) -> None:
        env = self.environment()
        self.sections["environment"] = {"status": "ok", "reason": None, "figures": [], "details": env}
        self.write_report()
        print(f"[gpu_check] {env.get('gpu') or env['cpu']}, torch {env['torch']} (CUDA {env['cuda']}); "
              f"reports in {self.out}, scratch in {self.work}", flush=True)  # fmt: skip
        try:
            self.make_data()
            cli = self.cli_tasks()
        except Exception as e:  # e.g. a dependency missing: the CLI runs cannot start; the measurements still try
            self.data_error = f"{type(e).__name__}: {e}"
            self.log(f"writing the test data failed:\n{traceback.format_exc()}")
            cli = []
        cuda = self.device.type == "cuda"
        if self.args.isolate == "part" or (self.args.isolate == "auto" and cuda):
            # each measurement alone (on the GPU), in its own process, after the CLI runs
            measure = [self.measure_task([n], exclusive=True) for n in MEASUREMENTS]
            tasks = cli + measure
        else:  # the CPU smoke run: one process for all measurements (imports are slow here), beside the CLI runs
            tasks = [self.measure_task(MEASUREMENTS, exclusive=False)] + cli

        def on_done() -> None:
            for t in tasks:  # measurements the scheduler skipped (time budget): their reason in their sections
                for n in t.parts:
                    path = self.parts_dir / f"{n}.json"
                    if t.result is not None and t.result.get("status") == "skipped" and not path.is_file():
                        part = {"status": "skipped", "reason": t.result["reason"], "figures": [], "details": {}}
                        atomic_write_text(path, json.dumps(part, indent=1))
            done = [t for t in cli if t.result is not None]
            if done:
                pending = [t for t in cli if t.result is None]
                sec = self.cli_section([t for t in cli if t.result is not None])
                if pending:
                    sec["reason"] = (sec["reason"] or "") + f" ({len(pending)} runs not finished)"
                self.sections["cli"] = sec
            self.write_report()

        Scheduler(tasks, self.jobs, self.deadline, on_done).run()
        self.sections["cli"] = self.cli_section(cli)
        self.write_report()


GOALS = {
    "step_ratio": f"MaskFeat ViT-B/16 step <= {GOAL_STEP_RATIO}x the plain timm ViT-B/16 step",
    "mfu": f">= {GOAL_MFU:.0%} MFU in bf16, compiled",
    "hog_share": f"HOG < {GOAL_HOG_SHARE:.0%} of the step",
    "syncs": "no host-device synchronisation per step",
}


def _part_status(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None


def _val_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "top1" in row:
            out.append(row)
    return out


def _weights_diff(a: Path, b: Path) -> float:
    try:
        from safetensors.torch import load_file

        x, y = load_file(str(a)), load_file(str(b))
        return max(float((x[k].float() - y[k].float()).abs().max()) for k in x if k in y)
    except Exception:
        return float("nan")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _version(module: str, dist: str) -> str | None:
    """The installed version of ``dist`` when ``module`` is importable (read from its metadata: no import)."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if unit == "fraction":
            return f"{100 * x:.1f}%"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-2):
            return f"{x:.3g}"
        return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def markdown(report: dict) -> str:
    """The report as Markdown: the machine, then one table row per figure (value, baseline, ratio, goal, result)."""
    meta = report.get("meta", {}).get("details", {})
    machine = meta.get("gpu") or meta.get("cpu", "?")
    if meta.get("gpu"):
        machine += f" ({meta.get('gpu_memory_gib')} GiB, sm {meta.get('capability')}); driver/clocks: " \
                   f"{meta.get('nvidia_smi') or '?'}"  # fmt: skip
    lines = [
        f"### GPU check, {meta.get('date', '?')} ({meta.get('mode', '?')} sizes)",
        "",
        f"- machine: {machine}; {meta.get('cpu_count')} CPU cores ({meta.get('cpu')}), load {meta.get('load')}",
        f"- torch {meta.get('torch')}, CUDA {meta.get('cuda')}, cuDNN {meta.get('cudnn')}, Python {meta.get('python')}"
        f"; timm {meta.get('packages', {}).get('timm')}, torchvision {meta.get('packages', {}).get('torchvision')}",
        f"- command: `{meta.get('command', '?')}` ({report.get('elapsed_s', 0):.0f} s)",
        f"- installed for this run: {', '.join(meta.get('installed_here') or []) or 'nothing'}; missing: "
        f"{', '.join(meta.get('missing') or []) or 'nothing'}",
        "",
        "| part | figure | value | baseline | ratio | goal | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    for name, sec in report["sections"].items():
        if name == "environment":
            continue
        figs = sec.get("figures") or []
        if sec.get("status") in ("skipped", "failed") and not figs:
            lines.append(f"| {name} | {sec.get('reason') or sec.get('status')} | | | | | {sec.get('status')} |")
            continue
        if sec.get("status") == "failed":
            notes.append(f"- {name}: FAILED: {sec.get('reason')}")
        for f in figs:
            unit = f.get("unit") or ""
            value = f.get("skipped") or (_fmt(f.get("value"), unit) + (f" {unit}" if unit not in ("", "fraction")
                                                                        else ""))  # fmt: skip
            base = _fmt(f.get("baseline"), unit) if f.get("baseline") is not None else "—"
            if f.get("baseline_name"):
                base += f" ({f['baseline_name']})"
            ratio = f"{f['ratio']:.3f}x" if finite(f.get("ratio")) else "—"
            result = {True: "pass", False: "**FAIL**", None: "—"}[f.get("pass")]
            lines.append(f"| {name} | {f['name']} | {value} | {base} | {ratio} | {f.get('goal') or '—'} | {result} |")
            if f.get("note"):
                notes.append(f"- {name} / {f['name']}: {f['note']}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Setting up a bare machine
# --------------------------------------------------------------------------------------------------------------


def install_missing(site: str, wheels: str | None) -> list[str]:
    """pip-install the modules the runs need that this Python lacks into ``site`` (on sys.path and the children's
    PYTHONPATH from then on): from the wheels in ``wheels`` when that folder has any (a machine without a package
    registry), else from the registry. ``--no-deps``: what is already installed (torch above all) stays."""
    site_path = Path(site).resolve()
    sys.path.insert(0, str(site_path))
    importlib.invalidate_caches()
    missing = [pkg for mod, pkg in REQUIRED.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return []
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site_path)]
    local = sorted(Path(wheels).glob("*.whl")) if wheels and Path(wheels).is_dir() else []
    if local:
        cmd += ["--no-index", "--find-links", str(Path(wheels).resolve())]
    print(f"[gpu_check] installing {' '.join(missing)} into {site_path}" + (f" from {wheels}" if local else ""),
          flush=True)  # fmt: skip
    proc = subprocess.run(cmd + missing, capture_output=True, text=True)
    if proc.returncode != 0:  # one unavailable package must not stop the others
        for pkg in missing:
            subprocess.run(cmd + [pkg], capture_output=True, text=True)
    importlib.invalidate_caches()
    return [pkg for mod, pkg in REQUIRED.items() if pkg in missing and importlib.util.find_spec(mod) is not None]


# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU smoke run; also a quick GPU try)")
    ap.add_argument("--out", default=None, help="report folder (default runs/gpu_check/<timestamp>)")
    ap.add_argument(
        "--work",
        default=None,
        help="scratch folder for data, runs and logs, kept (default: a temp folder, removed at the end)",
    )
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 440; tiny 170)")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"the GPU's dense bf16 peak for MFU (default: H200 SXM, {H200_BF16_DENSE_TFLOPS})",
    )
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; eager on CPU)")
    ap.add_argument("--jobs", type=int, default=None, help="CLI runs at a time (default 4 on a GPU, 3 on the CPU)")
    ap.add_argument(
        "--install-missing",
        dest="site",
        default=None,
        metavar="DIR",
        help="first pip-install missing dependencies into DIR (torch and what is there stay)",
    )
    ap.add_argument("--wheels", default=None, help="with --install-missing: a folder of wheels to install from")
    ap.add_argument("--isolate", choices=["auto", "part", "group"], default="auto",
                    help="measurements each alone in its own process (part: default on a GPU) or all in one process "
                    "beside the CLI runs (group: default on the CPU)")  # fmt: skip
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ctx", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.installed = []
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.budget is None:
        args.budget = 170.0 if args.tiny and not args.device.startswith("cuda") else 440.0
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return child_main(args.child.split(","), args.ctx)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: error: --device cuda but torch sees no GPU (use --device cpu --tiny)", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("[gpu_check] no GPU: running the tiny sizes on the CPU (the full sizes need a GPU)", flush=True)
        args.tiny = True
        args.budget = min(args.budget, 170.0)
    if args.site:
        args.site = str(Path(args.site).resolve())
        args.installed = install_missing(args.site, args.wheels)
    check = Check(args, argv)
    try:
        check.run()
    finally:
        if not args.work:  # our own temp folder: the logs' tails are in gpu_check.log
            shutil.rmtree(check.work, ignore_errors=True)
    failed = [n for n, s in check.sections.items() if s.get("status") == "failed"]
    fails = [f"{n}: {f['name']}" for n, s in check.sections.items() for f in s.get("figures", []) if
             f.get("pass") is False]  # fmt: skip
    print(f"[gpu_check] done in {time.time() - check.t0:.0f} s: {check.out / 'gpu_check.md'}"
          f"{'; failed parts: ' + ', '.join(failed) if failed else ''}"
          f"{'; goals missed: ' + '; '.join(fails) if fails else ''}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
