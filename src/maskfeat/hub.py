"""``maskfeat export CHECKPOINT OUT_DIR --hub``: a folder that timm loads as it loads a Hugging Face Hub repository,

    timm.create_model("local-dir:OUT_DIR", pretrained=True)   # video encoders: import maskfeat first

holding exactly ``config.json`` (timm's layout: ``architecture``, ``num_classes``, ``num_features``,
``model_args``, ``pretrained_cfg``), one weights file ``model.safetensors`` (timm's local-dir loader takes the
first of several) and ``README.md``, a model card with the Hub's YAML front matter.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from maskfeat import checkpoint as ckpt_io
from maskfeat.models.names import hub_task
from maskfeat.models.registry import create_encoder

__all__ = ["HUB_FILES", "hub_config", "model_card", "summarize_metrics", "write_hub_folder"]

HUB_FILES = ("config.json", "model.safetensors", "README.md")
# The settings a model card repeats from the run's config, as the command line would set them.
_CARD_KEYS = ("model.name", "data.path", "data.image_size", "video.num_frames", "train.epochs", "train.batch_size",
              "train.lr", "mask.ratio", "target.name", "data.label_fraction", "seed")  # fmt: skip


def hub_config(meta: dict[str, Any], num_features: int, license: str) -> dict[str, Any]:
    """timm's ``config.json`` of an encoder's ``{"architecture", "model_args", "pretrained_cfg"}``."""
    args = dict(meta["model_args"])
    num_classes = int(args.pop("num_classes", 0))
    pretrained_cfg = {**meta.get("pretrained_cfg", {}), "num_classes": num_classes, "license": license}
    config = {"architecture": meta["architecture"], "num_classes": num_classes, "num_features": int(num_features)}
    if pretrained_cfg.get("label_names"):
        config["label_names"] = pretrained_cfg["label_names"]
    if "global_pool" in args:
        config["global_pool"] = args["global_pool"]
    return {**config, "model_args": {**args, "num_classes": num_classes}, "pretrained_cfg": pretrained_cfg}


def write_hub_folder(out_dir: str, state: dict[str, torch.Tensor], meta: dict[str, Any],
                     provenance: dict[str, Any], license: str = "apache-2.0") -> list[str]:  # fmt: skip
    """Write the three files of :data:`HUB_FILES` into ``out_dir`` (a folder holding nothing else). The weights
    are checked, name for name and shape for shape, against the encoder ``meta`` builds. Returns the paths."""
    others = sorted(set(os.listdir(out_dir)) - set(HUB_FILES)) if os.path.isdir(out_dir) else []
    if others:
        raise ValueError(f"{out_dir} holds other files ({', '.join(others[:3])}): export --hub into a new folder")
    args = dict(meta["model_args"])
    with torch.device("meta"):
        model = create_encoder(meta["architecture"], args, num_classes=int(args.pop("num_classes", 0)))
    diff = ckpt_io.state_mismatches(model, state)
    if diff:
        raise ValueError(f"the weights do not fit {meta['architecture']} as its model_args build it: {diff[:4]}")
    config = hub_config(meta, model.num_features, license)
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name) for name in HUB_FILES]
    ckpt_io.atomic_write(paths[0], lambda f: f.write((json.dumps(config, indent=2) + "\n").encode()))
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    ckpt_io.atomic_write(paths[1], lambda f: f.write(ckpt_io.safetensors_bytes(tensors)))
    card = model_card(config, provenance, os.path.basename(os.path.abspath(out_dir)))
    ckpt_io.atomic_write(paths[2], lambda f: f.write(card.encode()))
    return paths


def model_card(config: dict[str, Any], provenance: dict[str, Any], name: str) -> str:
    """README.md of a Hub folder: YAML front matter (tags, pipeline_tag, library_name, license), then what the
    model is, how it was trained (command, data, settings), its metrics and how to load it.

    ``provenance``: ``command`` (pretrain | finetune | None), ``config`` (the run's resolved config, a dict, or
    None), ``metrics`` (see :func:`summarize_metrics`), ``source`` (the exported path)."""
    arch, num_classes = config["architecture"], config["num_classes"]
    task, needs_registry = hub_task(arch, num_classes)
    tags = [task, "timm", "maskfeat"] + (["self-supervised"] if provenance.get("command") == "pretrain" else [])
    front = ["---", "tags:", *[f"- {t}" for t in tags], f"pipeline_tag: {task}", "library_name: timm",
             f"license: {config['pretrained_cfg']['license']}", "---"]  # fmt: skip
    what = f"classifier ({num_classes} classes)" if num_classes else f"encoder ({config['num_features']}-d features)"
    lines = [*front, f"# Model card for {name}", "",
             f"A `{arch}` {what} with maskfeat (MaskFeat, Wei et al., CVPR 2022: masked feature prediction of HOG "
             "targets), in timm's layout.", "", "## Model Details", *_details(config, provenance), "",
             *_metrics_section(provenance.get("metrics")), "## Model Usage", "", "```python", "import timm",
             *(["import maskfeat  # adds maskfeat's video encoders to timm's registry"]
               if needs_registry else []),
             "", 'model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True).eval()',
             "data_config = timm.data.resolve_data_config({}, model=model)  # input size, mean, std, crop_pct",
             "```", "", "From the Hub: `timm.create_model(\"hf-hub:USER/REPO\", pretrained=True)`.", "",
             "## Citation", "", "```bibtex", _CITATION, "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _details(config: dict[str, Any], provenance: dict[str, Any]) -> list[str]:
    cfg, command = provenance.get("config"), provenance.get("command")
    p = config["pretrained_cfg"]
    out = [
        f"- **Model type:** {'classification' if config['num_classes'] else 'feature backbone'}",
        f"- **Input:** {' x '.join(map(str, p.get('input_size', [])))}"
        + (f", {p['num_frames']} frames every {p['frame_stride']}" if "num_frames" in p else "")
        + f"; mean {p.get('mean')}, std {p.get('std')}, crop_pct {p.get('crop_pct')}, {p.get('interpolation')}",
    ]
    if cfg is None:
        return [
            *out,
            f"- **Weights:** `{provenance.get('source')}` (no run config beside it: see where they came from)",
        ]
    skip = {"video.num_frames"} if "num_frames" not in p else set()  # an image model: no clip settings
    skip |= {"data.label_fraction"} if command == "pretrain" else {"mask.ratio", "target.name"}
    settings = [f"{k}={_get(cfg, k)}" for k in _CARD_KEYS if k not in skip and _get(cfg, k) is not None]
    return [*out, f"- **Trained with:** `maskfeat {command} {' '.join(settings)}` (the settings of its resolved "
            "config that matter most)", f"- **Data:** `{_get(cfg, 'data.path') or 'the embedded sample images'}`"
            + (f", validated on `{_get(cfg, 'data.val_path')}`" if _get(cfg, "data.val_path") else ""),
            f"- **Pre-trained weights:** `{_get(cfg, 'model.checkpoint')}`" if _get(cfg, "model.checkpoint") else
            "- **Pre-trained weights:** none (trained from random weights)"]  # fmt: skip


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def summarize_metrics(path: str) -> dict[str, Any] | None:
    """The last training row (``step``, ``epoch``, ``loss``) and the best evaluation (``top1``, ``top5``) of a
    metrics.jsonl; None when there is no such file."""
    if not os.path.isfile(path):
        return None
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a killed run
                continue
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "top1" in r]
    out: dict[str, Any] = {}
    if train:
        out["train"] = {k: train[-1][k] for k in ("step", "epoch", "loss", "baseline") if k in train[-1]}
    if evals:
        best = max(evals, key=lambda r: r["top1"])
        out["best_eval"] = {k: best[k] for k in ("step", "epoch", "top1", "top5") if k in best}
    return out or None


def _metrics_section(metrics: dict[str, Any] | None) -> list[str]:
    if not metrics:
        return []
    out = ["## Metrics", "", "From the run's metrics.jsonl:", ""]
    if "train" in metrics:
        t = metrics["train"]
        base = f" (loss of predicting the batch's mean target: {t['baseline']:.4f})" if "baseline" in t else ""
        out.append(f"- last training step {t.get('step')} (epoch {t.get('epoch')}): loss {t['loss']:.4f}{base}")
    if "best_eval" in metrics:
        e = metrics["best_eval"]
        out.append(f"- best evaluation (step {e.get('step')}): top-1 {e['top1']:.2f}%, top-5 {e.get('top5', 0):.2f}%")
    return [*out, ""]


_CITATION = """@inproceedings{wei2022masked,
  title={Masked Feature Prediction for Self-Supervised Visual Pre-Training},
  author={Wei, Chen and Fan, Haoqi and Xie, Saining and Wu, Chao-Yuan and Yuille, Alan and Feichtenhofer, Christoph},
  booktitle={CVPR}, year={2022}}"""
