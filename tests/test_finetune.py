"""finetune / linprobe / evaluate / export: real runs on small labeled folders, and the pieces they use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file
from test_cli import TINY, maskfeat, rows

from maskfeat.builder import build_classifier, load_pretrained
from maskfeat.checkpoint import write_encoder
from maskfeat.data.sampler import label_subset
from maskfeat.models import create_encoder, encoder_model_args


def test_finetune_evaluates_each_epoch_keeps_the_best_and_exports_a_timm_classifier(labeled, pretrained, tmp_path):
    out = tmp_path / "ft"
    r = maskfeat("finetune", *TINY, f"data.path={labeled / 'train'}", f"data.val_path={labeled / 'val'}",
                 f"model.checkpoint={pretrained / 'encoder.safetensors'}", f"output_dir={out}", "train.epochs=2",
                 "data.num_workers=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "loaded pre-trained encoder" in r.stderr
    evals = [m for m in rows(out / "metrics.jsonl") if "top1" in m]
    assert [m["epoch"] for m in evals] == [0, 1]  # one evaluation per epoch
    for m in evals:
        assert 0 <= m["top1"] <= m["top5"] <= 100
        assert m["top1"] * 12 / 100 == pytest.approx(round(m["top1"] * 12 / 100))  # k of 12 val images
    best = torch.load(out / "checkpoint-best.pt", weights_only=True)
    assert best["best"]["top1"] == max(m["top1"] for m in evals)

    meta = json.loads((out / "encoder.json").read_text())
    assert meta["model_args"]["num_classes"] == 3
    model = timm.create_model(meta["architecture"], pretrained=False, **{"num_classes": 0, **meta["model_args"]})
    model.load_state_dict(load_file(out / "encoder.safetensors"), strict=True)

    ev = maskfeat("evaluate", *TINY, f"data.val_path={labeled / 'val'}", f"output_dir={tmp_path / 'ev'}",
                  f"model.checkpoint={out / 'checkpoint-last.pt'}")  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    (row,) = rows(tmp_path / "ev" / "metrics.jsonl")
    assert row["top1"] == pytest.approx(evals[-1]["top1"])  # the same weights give the same accuracy


def test_linprobe_leaves_the_encoder_untouched(labeled, pretrained, tmp_path):
    out = tmp_path / "lp"
    r = maskfeat("linprobe", *TINY, f"data.path={labeled / 'train'}", f"data.val_path={labeled / 'val'}",
                 f"model.checkpoint={pretrained / 'checkpoint-last.pt'}", f"output_dir={out}", "train.epochs=2",
                 "data.num_workers=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "(99 trainable params," in r.stderr  # the head: Linear(32, 3) after a BatchNorm without affine
    trained = torch.load(out / "checkpoint-last.pt", weights_only=True)["model"]
    encoder = load_file(pretrained / "encoder.safetensors")
    for k, v in encoder.items():
        assert torch.equal(trained[k], v), k  # frozen, pre-trained final norm included
    assert not torch.equal(trained["head.1.weight"], torch.zeros_like(trained["head.1.weight"]))
    assert [m["epoch"] for m in rows(out / "metrics.jsonl") if "top1" in m] == [0, 1]


def test_classification_needs_labels(image_folder, tmp_path):
    r = maskfeat("finetune", *TINY, f"data.path={image_folder}", f"data.val_path={image_folder}",
                 f"output_dir={tmp_path / 'x'}")  # fmt: skip
    assert r.returncode == 2 and "has no class sub-folders" in r.stderr


def test_label_subset_is_class_balanced_and_seeded():
    labels = [c for c in range(4) for _ in range(50)]
    keep = label_subset(labels, 0.1, seed=0)
    assert len(keep) == 20 and sorted({labels[i] for i in keep}) == [0, 1, 2, 3]
    assert all(sum(labels[i] == c for i in keep) == 5 for c in range(4))
    assert keep == label_subset(labels, 0.1, seed=0) != label_subset(labels, 0.1, seed=1)
    assert len(label_subset([0, 0, 1], 0.01, seed=0)) == 2  # at least one per class


def test_pretrained_weights_load_with_position_embeddings_resampled_to_a_new_size(tmp_path):
    torch.manual_seed(0)
    args = encoder_model_args(32, depth=1, embed_dim=32, num_heads=2)
    encoder = create_encoder("vit_tiny_patch16_224", args)
    write_encoder(str(tmp_path), encoder.state_dict(), "vit_tiny_patch16_224", args)
    meta = {"architecture": "vit_tiny_patch16_224", "model_args": {**args, "img_size": 64, "global_pool": "avg",
                                                                     "num_classes": 5}}  # fmt: skip
    model = build_classifier(meta, "finetune")
    load_pretrained(model, str(tmp_path / "encoder.safetensors"))
    assert model.pos_embed.shape == (1, 1 + 16, 32)
    torch.testing.assert_close(model.pos_embed[:, 0], encoder.pos_embed[:, 0])  # class token position kept
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)


def test_export_round_trip_gives_the_same_outputs_in_timm(pretrained, tmp_path):
    r = maskfeat("export", str(pretrained / "checkpoint-last.pt"), str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "exp" / "encoder.json").read_text())
    theirs = timm.create_model(meta["architecture"], pretrained=False, **{"num_classes": 0, **meta["model_args"]})
    theirs.load_state_dict(load_file(tmp_path / "exp" / "encoder.safetensors"), strict=True)
    from maskfeat.builder import build_pretrain_model
    from maskfeat.checkpoint import load_checkpoint
    from maskfeat.config import load_config

    ckpt = load_checkpoint(str(pretrained / "checkpoint-last.pt"))
    cfg = load_config("pretrain", None, [f"{k}" for k in TINY])
    ours, _ = build_pretrain_model(cfg)
    ours.load_state_dict(ckpt["model"])
    x = torch.randn(2, 3, 32, 32)
    ours.eval(), theirs.eval()
    no_mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    torch.testing.assert_close(ours.forward_features(x, no_mask), theirs.forward_features(x)[:, 1:])


def _timm_encoder(folder: Path) -> tuple[dict, torch.nn.Module]:
    """The encoder of ``folder`` built the way encoder.json tells timm to: its ``model_args`` and ``pretrained_cfg``."""
    meta = json.loads((folder / "encoder.json").read_text())
    model = timm.create_model(meta["architecture"], pretrained=False, pretrained_cfg_overlay=meta["pretrained_cfg"],
                              **{"num_classes": 0, **meta["model_args"]})  # fmt: skip
    model.load_state_dict(load_file(folder / "encoder.safetensors"), strict=True)
    return meta, model.eval()


def _assert_timm_preprocesses_as_maskfeat(model: torch.nn.Module, image: Path, size: int, crop_pct: float) -> None:
    from timm.data import create_transform, resolve_data_config

    from maskfeat.data import IMAGENET_MEAN, IMAGENET_STD, eval_transform

    cfg = resolve_data_config({}, model=model)
    assert tuple(cfg["input_size"]) == (3, size, size) and cfg["crop_pct"] == crop_pct
    assert cfg["interpolation"] == "bicubic" and cfg["crop_mode"] == "center"
    assert tuple(cfg["mean"]) == IMAGENET_MEAN and tuple(cfg["std"]) == IMAGENET_STD  # not timm's ViT 0.5 / 0.5
    img = Image.open(image).convert("RGB")
    theirs, ours = create_transform(**cfg)(img), eval_transform(size, crop_pct=crop_pct)(img)
    assert theirs.shape == ours.shape and (theirs - ours).abs().mean() < 1e-3  # timm's transform is maskfeat's


def test_exported_pretrain_encoder_tells_timm_its_preprocessing_and_pooling(labeled, pretrained, tmp_path):
    meta, model = _timm_encoder(pretrained)
    assert meta["pretrained_cfg"]["num_classes"] == 0
    _assert_timm_preprocesses_as_maskfeat(model, next((labeled / "val" / "class0").iterdir()), 32, 0.875)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # features = the average of the final-norm patch tokens, as linprobe / finetune pool
        torch.testing.assert_close(model(x), model.forward_features(x)[:, 1:].mean(1))

    r = maskfeat("export", str(pretrained / "checkpoint-last.pt"), str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "exp" / "encoder.json").read_text()) == meta

    # a checkpoint of an older version (no pretrained_cfg, token pooling): export rebuilds both from its config
    old = torch.load(pretrained / "checkpoint-last.pt", weights_only=True)
    token_pooled = {k: v for k, v in meta["model_args"].items() if k not in ("global_pool", "fc_norm")}
    old["encoder"] = {"architecture": meta["architecture"], "model_args": token_pooled}
    torch.save(old, tmp_path / "old.pt")
    r = maskfeat("export", str(tmp_path / "old.pt"), str(tmp_path / "exp-old"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "exp-old" / "encoder.json").read_text()) == meta


def test_finetune_without_val_path_lists_its_outputs_logs_the_peak_lr_and_exports_its_preprocessing(
    labeled, pretrained, tmp_path
):
    out = tmp_path / "ft"
    r = maskfeat("finetune", *TINY, f"data.path={labeled / 'train'}", f"output_dir={out}", "train.epochs=1",
                 f"model.checkpoint={pretrained / 'encoder.safetensors'}", "train.warmup_epochs=0",
                 "data.crop_pct=0.9", "data.num_workers=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    (done,) = [line for line in r.stderr.splitlines() if line.startswith("done.")]
    assert not (out / "checkpoint-best.pt").exists() and "checkpoint-best.pt" not in done  # nothing evaluated
    assert "checkpoint-last.pt" in done and "encoder.safetensors" in done
    # layer decay (0.65, the finetune default) scales the lower layers down: the logged lr is the peak group's,
    # which at step 1 without warm-up is train.lr itself
    peak = OmegaConf.load(out / "config.yaml").train.lr
    assert rows(out / "metrics.jsonl")[0]["lr"] == pytest.approx(peak, rel=1e-6)

    meta, model = _timm_encoder(out)
    assert meta["pretrained_cfg"]["num_classes"] == 3
    assert meta["pretrained_cfg"]["label_names"] == ["class0", "class1", "class2"]  # the order of the logits
    _assert_timm_preprocesses_as_maskfeat(model, next((labeled / "val" / "class1").iterdir()), 32, 0.9)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_epoch_size_makes_the_schedule_a_budget_of_samples(labeled, tmp_path):
    """``train.epoch_size``: an epoch draws that many samples whatever the data set's size (36 images here, 90 an
    epoch: 2.5 passes), so the step count and the evaluations follow the budget, not the number of images."""
    out = tmp_path / "ft"
    r = maskfeat("finetune", *TINY, f"data.path={labeled / 'train'}", f"data.val_path={labeled / 'val'}",
                 f"output_dir={out}", "train.epochs=2", "train.epoch_size=90", "train.batch_size=8",
                 "train.log_every=1", "data.num_workers=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "on 36 images" in r.stderr and "an epoch is 90 samples (2.5 passes)" in r.stderr
    assert "22 steps" in r.stderr  # 2 epochs x (90 // 8) drop-last steps
    metrics = rows(out / "metrics.jsonl")
    assert max(m["step"] for m in metrics if "loss" in m) == 22
    assert [m["epoch"] for m in metrics if "top1" in m] == [0, 1]
