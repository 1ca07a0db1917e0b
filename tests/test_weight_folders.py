"""``model.checkpoint=OUT_DIR``: the folders of convert, export and runs, read by every command."""

from __future__ import annotations

import pytest
import torch
from conftest import SHARED
from safetensors.torch import load_file
from test_cli import maskfeat

from maskfeat.config import load_config
from maskfeat.errors import ConfigError
from maskfeat.weight_files import encoder_file, model_file

FIXTURES = SHARED / "fixtures" / "slowfast"
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "MANIFEST.json").is_file(), reason="no ../shared/fixtures/slowfast")
# the size of the vit_image_pt fixture (a reduced ViT-B: width 48, 3 blocks, 4 heads, 112 px)
FIXTURE_VIT = ["model.name=vit_base_patch16_224", "model.embed_dim=48", "model.depth=3", "model.num_heads=4",
               "data.image_size=112", "train.batch_size=4", "data.num_workers=0", "train.epochs=1"]  # fmt: skip


def test_a_folder_resolves_to_the_file_each_use_needs(tmp_path):
    for name in ("encoder.safetensors", "maskfeat.safetensors", "checkpoint-last.pt"):
        (tmp_path / name).write_bytes(b"")
    assert model_file(str(tmp_path)) == str(tmp_path / "maskfeat.safetensors")
    assert encoder_file(str(tmp_path)) == str(tmp_path / "encoder.safetensors")
    assert model_file(str(tmp_path / "encoder.safetensors")) == str(tmp_path / "encoder.safetensors")
    (tmp_path / "maskfeat.safetensors").unlink()
    assert model_file(str(tmp_path)) == str(tmp_path / "checkpoint-last.pt")  # a run: the whole model
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no weights in the folder .*empty: expected one of encoder.safetensors"):
        encoder_file(str(tmp_path / "empty"))


def test_config_accepts_a_folder_with_weights_and_refuses_one_without(tmp_path):
    (tmp_path / "converted").mkdir()
    (tmp_path / "converted" / "maskfeat.safetensors").write_bytes(b"")
    cfg = load_config("pretrain", None, [f"model.checkpoint={tmp_path / 'converted'}"])
    assert cfg.model.checkpoint == str(tmp_path / "converted")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="model.checkpoint not found: .*empty \\(a weights file, or a folder"):
        load_config("finetune", None, [f"model.checkpoint={tmp_path / 'empty'}"])


def _continue_official_vit(conv, out, image_folder, args: list[str]):
    """Convert the official ViT fixture into ``conv``, then pre-train from it into ``out`` with a learning rate of
    1e-12 (after the steps, every weight is still the converted one, to 1e-6)."""
    assert maskfeat("convert", str(FIXTURES / "vit_image_pt.pyth"), str(conv)).returncode == 0
    r = maskfeat("pretrain", *args, f"data.path={image_folder}", f"model.checkpoint={conv}", f"output_dir={out}",
                 "train.lr=1e-12", "train.min_lr=1e-12", "train.warmup_epochs=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r


@needs_fixtures
def test_pretrain_continues_from_a_converted_folder_with_the_whole_model(tmp_path, image_folder):
    conv, out = tmp_path / "converted", tmp_path / "continued"
    r = _continue_official_vit(conv, out, image_folder, FIXTURE_VIT)
    assert f"continuing pre-training from {conv / 'maskfeat.safetensors'}" in r.stderr
    start = load_file(conv / "maskfeat.safetensors")
    end = torch.load(out / "checkpoint-last.pt", weights_only=True)["model"]
    assert end.keys() == start.keys()
    for k in ("mask_token", "head.weight", "head.bias", "encoder.norm.weight", "encoder.pos_embed"):
        torch.testing.assert_close(end[k], start[k], atol=1e-6, rtol=0, msg=k)

    # a run whose architecture or target differ from the folder's: one line, before any training
    for extra, why in ((["model.name=vit_small_patch16_224"], "holds a vit_base_patch16_224 model, but model.name"),
                       (["target.nbins=6"], "pre-trained with another target (target.nbins: 9 there, 6 here)"),
                       (["model.depth=2"], "does not fit this run's pre-training model")):  # fmt: skip
        args = [a for a in FIXTURE_VIT if a.split("=")[0] not in {e.split("=")[0] for e in extra}] + extra
        r = maskfeat("pretrain", *args, f"data.path={image_folder}", f"model.checkpoint={conv}",
                     f"output_dir={tmp_path / 'bad'}")  # fmt: skip
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and last.startswith("maskfeat: error: ") and why in last, r.stderr
        assert not (tmp_path / "bad" / "checkpoint-last.pt").exists()


@needs_fixtures
def test_finetune_then_evaluate_take_folders(tmp_path, labeled):
    conv = tmp_path / "converted"
    assert maskfeat("convert", str(FIXTURES / "vit_image_pt.pyth"), str(conv)).returncode == 0
    ft = tmp_path / "ft"
    r = maskfeat("finetune", *FIXTURE_VIT, f"data.path={labeled / 'train'}", f"data.val_path={labeled / 'val'}",
                 f"model.checkpoint={conv}", f"output_dir={ft}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"loaded pre-trained encoder from {conv}" in r.stderr
    ev = maskfeat("evaluate", *FIXTURE_VIT, f"data.val_path={labeled / 'val'}", f"model.checkpoint={ft}",
                  f"output_dir={tmp_path / 'ev'}")  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    assert (tmp_path / "ev" / "metrics.jsonl").is_file()


@needs_fixtures
def test_pretrain_continues_at_another_size_with_the_positions_resampled(tmp_path, image_folder):
    """The official ViT (112 px: 7x7 patches) continued at 160 px (10x10): pos_embed resampled, all else as converted;
    resample_positions does the same for MViT's relative position tables and a video ViT's embeddings."""
    conv, out = tmp_path / "converted", tmp_path / "bigger"
    args = [a for a in FIXTURE_VIT if not a.startswith("data.image_size")] + ["data.image_size=160"]
    r = _continue_official_vit(conv, out, image_folder, args)
    assert "resampled to this run's input size: pos_embed" in r.stderr
    start, end = load_file(conv / "maskfeat.safetensors"), torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert start["encoder.pos_embed"].shape == (1, 50, 48) and end["model"]["encoder.pos_embed"].shape == (1, 101, 48)
    torch.testing.assert_close(end["model"]["encoder.pos_embed"][:, 0], start["encoder.pos_embed"][:, 0])  # class
    torch.testing.assert_close(end["model"]["head.weight"], start["head.weight"], atol=1e-6, rtol=0)

    import timm

    from maskfeat.convert import convert
    from maskfeat.models.resample import resample_positions

    mvit = convert(str(FIXTURES / "mvit_video_pt.pyth"))
    bigger = timm.create_model(mvit.encoder_meta["architecture"], **{**mvit.encoder_meta["model_args"],
                                                                      "img_size": 128, "num_frames": 12})  # fmt: skip
    state, resized = resample_positions(bigger, mvit.encoder_state)
    assert resized and all(k.rsplit(".", 1)[-1] in ("rel_pos_h", "rel_pos_w", "rel_pos_t") for k in resized)
    bigger.load_state_dict(state, strict=True)
    vit = timm.create_model("vit_s", img_size=32, num_frames=4, depth=1, embed_dim=32, num_heads=2)
    big = timm.create_model("vit_s", img_size=48, num_frames=8, depth=1, embed_dim=32, num_heads=2)
    state, resized = resample_positions(big, vit.state_dict())
    assert sorted(resized) == ["pos_embed_spatial", "pos_embed_temporal"]
    big.load_state_dict(state, strict=True)
