"""``maskfeat evaluate``: top-1 / top-5 of a saved classifier (a finetune or linprobe checkpoint, or a fine-tuned
encoder.safetensors with its head) on ``data.val_path``, or the frame mAP of a ``maskfeat detect`` checkpoint on
the AVA-format folder ``data.val_path``; written to a run record of its own.

The clips are made as the config says (``video.*``, ``detect.*``: pass the config the run was trained with), at
the frame size and clip length the model was built for."""

from __future__ import annotations

import json
import logging
import os

from omegaconf import DictConfig

from maskfeat import builder
from maskfeat import checkpoint as ckpt_io
from maskfeat.builder.detection import ava_dataset, build_detector, eval_collate
from maskfeat.config import to_yaml
from maskfeat.data.ava import AvaFolder
from maskfeat.data.loader import make_loader
from maskfeat.distributed import setup_run
from maskfeat.engine import evaluate
from maskfeat.errors import ConfigError
from maskfeat.evaluation.detection import DetectionEvaluation
from maskfeat.runner import amp_dtype
from maskfeat.weight_files import encoder_file

log = logging.getLogger("maskfeat")

RUN_RECORD = ("config.yaml", "metrics.jsonl", ckpt_io.LAST)


def _read_classifier(path: str, ckpt: dict | None, allow_pickle: bool) -> tuple[str, dict, dict, list[str]]:
    """(kind, encoder meta, state dict, class names) of a saved classifier: the checkpoint ``ckpt`` read from
    ``path``, or (None) the encoder.safetensors ``path``."""
    if ckpt is None:
        state, meta = ckpt_io.read_encoder(path, allow_pickle)
        kind, classes = "finetune", []
    else:
        kind, meta, state = ckpt.get("classifier"), ckpt.get("encoder"), ckpt.get("model")
        classes = list(ckpt.get("classes", []))
        if kind not in builder.CLASSIFIERS:
            raise ConfigError(f"{path} is not a finetune or linprobe checkpoint: it has no classifier")
    if meta is None or "num_classes" not in meta["model_args"]:
        raise ConfigError(f"{path} has no classifier head (num_classes in encoder.json): evaluate a finetuned model")
    return kind, meta, state, classes


def _evaluate_detector(cfg: DictConfig, ckpt: dict, device, out: str) -> dict[str, float]:
    """mAP / chance mAP of a detect checkpoint's detector on the detected boxes of ``data.val_path``."""
    meta, classes = ckpt["encoder"], list(ckpt["classes"])
    model = build_detector(meta, len(classes), roi_size=ckpt["config"]["detect"]["roi_size"])
    model.load_state_dict(ckpt["model"], strict=True)
    model.to(device)
    args = meta["model_args"]
    size = args["img_size"][0] if isinstance(args["img_size"], list) else args["img_size"]
    cfg.video.num_frames = args.get("num_frames", cfg.video.num_frames)
    folder = AvaFolder(cfg.data.val_path, "val")
    loader, _ = make_loader(ava_dataset(cfg, folder, classes, train=False, crop_size=size), eval_collate(model),
                            cfg.train.batch_size, cfg.data.num_workers, cfg.seed, device, train=False)  # fmt: skip
    os.makedirs(out, exist_ok=True)
    return DetectionEvaluation(model, loader, folder, device, amp_dtype(cfg.train.amp, device), out)()


def run_evaluate(cfg: DictConfig) -> dict:
    """Top-1 / top-5 (a classifier) or frame mAP (a detector) of ``model.checkpoint`` on ``data.val_path``;
    appended to the record's metrics.jsonl."""
    device, _, _ = setup_run(cfg)
    path = encoder_file(cfg.model.checkpoint)  # a folder: its encoder.safetensors, else its checkpoint-last.pt
    ckpt = None if path.endswith(".safetensors") else ckpt_io.load_checkpoint(path, cfg.model.allow_pickle)
    if ckpt is not None and ckpt.get("classifier") == "detect":
        out = evaluation_folder(cfg.output_dir)
        return _write_record(cfg, out, path, _evaluate_detector(cfg, ckpt, device, out),
                             ("detections.csv", "ava_per_class.json"))  # fmt: skip
    kind, meta, state, classes = _read_classifier(path, ckpt, cfg.model.allow_pickle)
    model = builder.build_classifier(meta, kind)
    model.load_state_dict(state, strict=True)
    model.to(device)
    size = meta["model_args"]["img_size"]
    size = size[0] if isinstance(size, list) else size
    loader = builder.val_loader(cfg, cfg.data.val_path, classes, device, size, meta["architecture"])
    num_classes = meta["model_args"]["num_classes"]
    if len(loader.dataset.classes) != num_classes:
        raise ConfigError(
            f"data.val_path has {len(loader.dataset.classes)} classes but the model predicts {num_classes}"
        )
    metrics = evaluate(model, loader, device, amp_dtype(cfg.train.amp, device))
    return _write_record(cfg, evaluation_folder(cfg.output_dir), path, metrics)


def _write_record(cfg: DictConfig, out: str, path: str, metrics: dict, written: tuple[str, ...] = ()) -> dict:
    """config.yaml and a metrics.jsonl row of the evaluation in ``out``; logs the metrics."""
    cfg.output_dir = out
    os.makedirs(out, exist_ok=True)
    ckpt_io.atomic_write(os.path.join(out, "config.yaml"), lambda f: f.write(to_yaml(cfg).encode()))
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 0, "epoch": 0, "checkpoint": path, **metrics}) + "\n")
    log.info(f"{path} on {cfg.data.val_path}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    log.info(f"written to {out}: {', '.join(['config.yaml', 'metrics.jsonl', *written])}")
    return metrics


def evaluation_folder(output_dir: str) -> str:
    """Where an evaluation writes its record: ``output_dir`` when it holds no run's record yet, else the first
    free ``output_dir/eval-N`` (so an evaluation never rewrites the record of the run it evaluates, nor of an
    earlier evaluation)."""

    def holds_record(folder: str) -> bool:
        return any(os.path.exists(os.path.join(folder, name)) for name in RUN_RECORD)

    if not holds_record(output_dir):
        return output_dir
    n = 1
    while holds_record(os.path.join(output_dir, f"eval-{n}")):
        n += 1
    out = os.path.join(output_dir, f"eval-{n}")
    log.info(f"{output_dir} holds another run's record: this evaluation goes to {out}")
    return out
