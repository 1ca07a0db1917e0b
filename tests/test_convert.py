"""maskfeat.convert and the official MaskFeat layouts, held against checkpoints and outputs of the official code.

The fixtures (``../shared/fixtures/slowfast``, see its README) were written by facebookresearch/SlowFast itself:
reduced-size models with the official topology, random weights, and the outputs SlowFast computes for a fixed
input and mask. Without ``../shared`` those tests skip; the others need nothing but the installed packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import ROOT, SHARED
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision.models.video import mvit_v2_s
from torchvision.models.video.mvit import MViT

import maskfeat.models.registry  # noqa: F401  (registers the video encoders with timm)
from maskfeat.convert import build_converted, convert, write_converted
from maskfeat.models.maskfeat import MaskFeat
from maskfeat.targets import HOGTarget

FIXTURES = SHARED / "fixtures" / "slowfast"
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "MANIFEST.json").is_file(), reason="no ../shared/fixtures/slowfast")
PRETRAIN, FINETUNE = ["vit_image_pt", "mvit_video_pt"], ["vit_image_ft", "mvit_video_ft"]


def manifest(name: str) -> dict:
    return json.loads((FIXTURES / "MANIFEST.json").read_text())["fixtures"][name]


def assert_close_to(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """The fixtures' tolerance: max |ours - ref| <= 1e-4 * max |ref|."""
    assert ours.shape == ref.shape, what
    err = float((ours.float() - ref).abs().max())
    assert err <= 1e-4 * float(ref.abs().max()), f"{what}: max abs error {err:.3g} (max |ref| {ref.abs().max():.3g})"


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@needs_fixtures
@pytest.mark.parametrize("name", PRETRAIN)
def test_official_pretraining_checkpoint_reproduces_the_official_outputs(name):
    result = convert(str(FIXTURES / f"{name}.pyth"))
    assert result.pretrain_state is not None and result.encoder_meta["target"]["name"] == "hog"
    model = build_converted(*result)  # loads strictly
    assert isinstance(model, MaskFeat) and not model.training
    assert n_params(model) == manifest(name)["parameters"]  # the official model, parameter for parameter
    io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
    mask = io["mask"]  # (B, N) on the output grid, as model(x, mask) takes it
    seen = []  # the output of the last block, class token first: the input of the final norm
    model.encoder.norm.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        loss, pred, target = model(io["x"], mask)
    assert_close_to(pred[mask], io["pred_masked"], "pred at the masked tokens")
    assert_close_to(target[mask], io["target_masked"], "target at the masked tokens")
    assert_close_to(loss, io["loss"], "loss")
    assert_close_to(pred, io["pred_all"], "pred at every token")
    assert_close_to(target, io["target_all"], "target at every token")
    assert_close_to(seen[0], io["features"], "features of the last block")


@needs_fixtures
@pytest.mark.parametrize("name", FINETUNE)
def test_official_finetuned_checkpoint_reproduces_the_official_logits(name):
    result = convert(str(FIXTURES / f"{name}.pyth"))
    assert result.pretrain_state is None and result.encoder_meta["model_args"]["num_classes"] == 5
    model = build_converted(*result)
    assert n_params(model) == manifest(name)["parameters"]
    io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
    with torch.no_grad():
        features = model.forward_head(model.forward_features(io["x"]), pre_logits=True)
        logits = model(io["x"])
    # mean pooling: the mean of the patch tokens, THEN the norm (fc_norm), then the classifier
    assert_close_to(features, io["features"], "pooled features")
    assert_close_to(logits, io["logits"], "logits")
    assert_close_to(logits.softmax(-1), io["probs"], "probabilities")


@needs_fixtures
def test_converted_folder_holds_what_rebuilds_the_model(tmp_path):
    result = convert(str(FIXTURES / "mvit_video_pt.pyth"))
    paths = write_converted(result, str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["encoder.json", "encoder.safetensors", "maskfeat.safetensors"]
    meta = json.loads((tmp_path / "encoder.json").read_text())
    assert meta["architecture"] == "mvit_v2_s" and meta["model_args"] == result.encoder_meta["model_args"]
    with safe_open(str(tmp_path / "maskfeat.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["maskfeat"]) == result.encoder_meta
    pre = build_converted(None, result.encoder_meta, load_file(str(tmp_path / "maskfeat.safetensors")))
    enc = build_converted(load_file(str(tmp_path / "encoder.safetensors")), meta)
    x = torch.randn(1, 3, 8, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(pre.encoder.forward_features(x), enc.forward_features(x))


def test_unreadable_or_unknown_sources_are_one_line_errors(tmp_path):
    bad = tmp_path / "damaged.pyth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"damaged.pyth: not a weights-only torch file") as e:
        convert(str(bad))
    assert "\n" not in str(e.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(ValueError, match="unknown layout; expected a SlowFast .pyth"):
        convert(str(other))
    with pytest.raises(ValueError, match="no such file"):
        convert(str(tmp_path / "missing.pyth"))


@needs_fixtures
def test_a_slowfast_file_with_a_foreign_cfg_is_refused(tmp_path):
    ckpt = torch.load(FIXTURES / "mvit_video_ft.pyth", map_location="cpu", weights_only=True)
    ckpt["cfg"] = ckpt["cfg"].replace("DIM_MUL_IN_ATT: false", "DIM_MUL_IN_ATT: true")
    torch.save(ckpt, tmp_path / "x.pyth")
    with pytest.raises(ValueError, match="do not fit"):  # the widths change: the weights cannot be this model's
        convert(str(tmp_path / "x.pyth"))
    ckpt["cfg"] = ckpt["cfg"].replace("RESIDUAL_POOLING: true", "RESIDUAL_POOLING: false")
    torch.save(ckpt, tmp_path / "x.pyth")
    with pytest.raises(ValueError, match="MVIT.RESIDUAL_POOLING"):
        convert(str(tmp_path / "x.pyth"))


# ---------------------------------------------------------------------------------------------------------------
# The official MViTv2 layout, and torchvision's under its own name
# ---------------------------------------------------------------------------------------------------------------


def test_official_mvit_s_has_the_official_parameter_count():
    with torch.device("meta"):
        pre = MaskFeat(timm.create_model("mvit_v2_s", pretrain=True), HOGTarget())
        ft = timm.create_model("mvit_v2_s", num_classes=400, global_pool="avg")
    # MaskMViT of k400_MVITv2_S_16x4_MaskFeat_PT.yaml: encoder, [MASK] token, head LayerNorm + 768 -> 108 linear
    assert n_params(pre) == 36_253_356
    assert n_params(ft) == 36_475_120  # MViT of k400_MVITv2_S_16x4_FT.yaml, 400 classes
    widened = [i for i, c in enumerate(pre.encoder.block_setting) if c.input_channels != c.output_channels]
    heads = [c.num_heads for c in pre.encoder.block_setting]
    assert widened == [0, 2, 13] and [heads.index(h) for h in (1, 2, 4, 8)] == [0, 1, 3, 14]


def test_mvit_v2_s_tv_is_torchvisions_mvit_v2_s():
    with torch.device("meta"):
        ours, theirs = timm.create_model("mvit_v2_s_tv", num_classes=400), mvit_v2_s()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert n_params(ours) == 34_537_744  # torchvision's documented num_params
    with torch.device("meta"):
        assert n_params(MaskFeat(timm.create_model("mvit_v2_s_tv", pretrain=True), HOGTarget())) == 34_315_980


@pytest.mark.parametrize("kind", ["mvit_v2_s", "mvit_v2_s_tv"])
def test_mvit_classification_equals_torchvision_forward_in_either_layout(kind):
    torch.manual_seed(0)
    args = {"depths": [1, 1, 1, 1], "embed_dim": 8, "num_heads": 1, "img_size": 64, "num_frames": 4}
    ours = timm.create_model(kind, num_classes=3, head_drop=0.0, **args).eval()
    theirs = MViT(spatial_size=(64, 64), temporal_size=4, block_setting=ours.block_setting, residual_pool=True,
                  residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=ours.dim_mul_in_att,
                  num_classes=3).eval()  # fmt: skip
    theirs.load_state_dict(ours.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


# ---------------------------------------------------------------------------------------------------------------
# mmpretrain's MaskFeat ViT and torchvision's MViTv2, from synthetic state dicts in their own layouts
# ---------------------------------------------------------------------------------------------------------------


def mmpretrain_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm-named ViT / MaskFeat state under mmpretrain's names (MaskFeatViT backbone, LinearNeck, ViT heads)."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("encoder.")
        parts = k.split(".")
        if parts[0] == "blocks":
            sub = ".".join(parts[2:])
            sub = {"norm1.weight": "ln1.weight", "norm1.bias": "ln1.bias", "norm2.weight": "ln2.weight",
                   "norm2.bias": "ln2.bias", "mlp.fc1.weight": "ffn.layers.0.0.weight",
                   "mlp.fc1.bias": "ffn.layers.0.0.bias", "mlp.fc2.weight": "ffn.layers.1.weight",
                   "mlp.fc2.bias": "ffn.layers.1.bias"}.get(sub, sub)  # fmt: skip
            out[f"backbone.layers.{parts[1]}.{sub}"] = v
            continue
        names = {"cls_token": "backbone.cls_token", "pos_embed": "backbone.pos_embed",
                 "mask_token": "backbone.mask_token",
                 "patch_embed.proj.weight": "backbone.patch_embed.projection.weight",
                 "patch_embed.proj.bias": "backbone.patch_embed.projection.bias", "norm.weight": "backbone.ln1.weight",
                 "norm.bias": "backbone.ln1.bias", "fc_norm.weight": "backbone.ln2.weight",
                 "fc_norm.bias": "backbone.ln2.bias"}  # fmt: skip
        out[names.get(k, k)] = v
    return out


def test_mmpretrain_maskfeat_vit_converts_and_predicts_the_same(tmp_path):
    from maskfeat.models.registry import create_encoder

    torch.manual_seed(0)
    args = {"img_size": 32, "depth": 2, "global_pool": "avg", "fc_norm": False}
    ours = MaskFeat(create_encoder("vit_tiny_patch16_224", args), HOGTarget(gaussian_window=16)).eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith("head.")}
    state = mmpretrain_names(state) | {"neck.fc.weight": ours.head.weight, "neck.fc.bias": ours.head.bias}
    sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    state |= {"target_generator.weight_x": sobel, "target_generator.weight_y": sobel.transpose(2, 3),
              "target_generator.gaussian_kernel": torch.ones(16, 16) / 256}  # fmt: skip
    torch.save({"meta": {"mmpretrain_version": "1.0.0"}, "state_dict": state}, tmp_path / "maskfeat_mm.pth")
    result = convert(str(tmp_path / "maskfeat_mm.pth"))
    assert result.encoder_meta["architecture"] == "vit_tiny_patch16_224"
    assert result.encoder_meta["target"]["gaussian_window"] == 16
    model = build_converted(*result)  # strict
    x, mask = torch.randn(2, 3, 32, 32), torch.tensor([[True, False, False, True], [False, True, True, True]])
    with torch.no_grad():
        for a, b in zip(model(x, mask), ours(x, mask)):
            torch.testing.assert_close(a, b)


def test_mmpretrain_finetuned_vit_converts_with_its_classifier(tmp_path):
    from maskfeat.models.registry import create_encoder

    torch.manual_seed(0)
    ours = create_encoder("vit_tiny_patch16_224", {"img_size": 32, "depth": 2, "global_pool": "avg"}, num_classes=4)
    state = mmpretrain_names(ours.state_dict())
    state |= {"head.layers.head.weight": state.pop("head.weight"), "head.layers.head.bias": state.pop("head.bias")}
    torch.save({"state_dict": state}, tmp_path / "vit_mm.pth")
    result = convert(str(tmp_path / "vit_mm.pth"))
    assert result.pretrain_state is None and result.encoder_meta["model_args"]["num_classes"] == 4
    model = build_converted(*result)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours.eval()(x))


@pytest.mark.parametrize("dim_mul_in_att", [True, False])
def test_torchvision_mvit_weights_convert_and_classify_the_same(tmp_path, dim_mul_in_att):
    from maskfeat.models.mvit import mvit_block_settings

    torch.manual_seed(0)
    setting = mvit_block_settings([1, 2, 1, 1], 8, 1, dim_mul_in_att=dim_mul_in_att)
    theirs = MViT(spatial_size=(64, 64), temporal_size=4, block_setting=setting, residual_pool=True,
                  residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=dim_mul_in_att,
                  num_classes=3).eval()  # fmt: skip
    torch.save(theirs.state_dict(), tmp_path / "mvit.pth")
    result = convert(str(tmp_path / "mvit.pth"))
    args = result.encoder_meta["model_args"]
    assert (args["depths"], args["img_size"], args["num_frames"]) == ([1, 2, 1, 1], [64, 64], 4)
    assert args["dim_mul_in_att"] == dim_mul_in_att and args["num_classes"] == 3
    model = build_converted(*result)
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x))


def test_torchvisions_mvit_v2_s_is_recognised_as_mvit_v2_s_tv():
    from maskfeat.convert.torchvision_mvit import convert_torchvision_mvit

    with torch.device("meta"):
        result = convert_torchvision_mvit(mvit_v2_s().state_dict(), "mvit_v2_s")
        model = build_converted(None, result.encoder_meta)
    assert result.encoder_meta["architecture"] == "mvit_v2_s_tv"
    args = result.encoder_meta["model_args"]
    assert (args["img_size"], args["num_frames"], args["num_classes"]) == ([224, 224], 16, 400)
    want = {k: v.shape for k, v in result.encoder_state.items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == want


# ---------------------------------------------------------------------------------------------------------------
# maskfeat convert SRC OUT_DIR, as a user runs it
# ---------------------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "maskfeat", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)  # fmt: skip


@needs_fixtures
@pytest.mark.parametrize("name", PRETRAIN + FINETUNE)
def test_convert_command_writes_the_folder_of_each_official_checkpoint(tmp_path, name):
    out = tmp_path / "converted"
    r = run_cli("convert", str(FIXTURES / f"{name}.pyth"), str(out))
    assert r.returncode == 0, r.stderr
    want = ["encoder.json", "encoder.safetensors"] + (["maskfeat.safetensors"] if name in PRETRAIN else [])
    assert sorted(p.name for p in out.iterdir()) == want
    assert str(out / "encoder.safetensors") in r.stdout and "\n" not in r.stdout.strip()
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["architecture"] == ("mvit_v2_s" if name.startswith("mvit") else "vit_base_patch16_224")
    assert ("num_classes" in meta["model_args"]) == (name in FINETUNE)
    reference = convert(str(FIXTURES / f"{name}.pyth")).encoder_state
    written = load_file(str(out / "encoder.safetensors"))
    assert written.keys() == reference.keys() and all(torch.equal(written[k], reference[k]) for k in written)


def test_convert_command_answers_help_and_refuses_bad_files_in_one_line(tmp_path):
    r = run_cli("convert", "--help")
    assert r.returncode == 0 and "usage: maskfeat convert" in r.stdout
    damaged = tmp_path / "damaged.pyth"
    damaged.write_bytes(b"\x80\x02 truncated")
    other = tmp_path / "other.pt"
    torch.save({"weights": {"fc.weight": torch.zeros(2, 2)}}, other)
    for src, why in ((damaged, "not a weights-only torch file"), (other, "unknown layout"),
                     (tmp_path / "missing.pyth", "no such file")):  # fmt: skip
        r = run_cli("convert", str(src), str(tmp_path / "out"))
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"maskfeat: error: cannot convert {src}") and why in lines[0]
    assert not (tmp_path / "out").exists()


def test_the_official_recipe_configs_build_the_official_models():
    """configs/pretrain/mvit_s_k400.yaml builds the official MViT-S pre-training model, parameter for parameter,
    and its fine-tuning config the official classifier (400 classes: the count of the official FT yaml)."""
    from maskfeat.builder import build_pretrain_model, encoder_args
    from maskfeat.config import load_config
    from maskfeat.models.registry import create_encoder

    configs = Path(__file__).parents[1] / "configs"
    pre = load_config("pretrain", str(configs / "pretrain" / "mvit_s_k400.yaml"), check_paths=False)
    with torch.device("meta"):
        model, meta = build_pretrain_model(pre)
    assert meta["architecture"] == "mvit_v2_s" and n_params(model) == 36_253_356
    ft = load_config("finetune", str(configs / "finetune" / "mvit_s_k400.yaml"), check_paths=False)
    args = encoder_args(ft, "finetune")
    assert (args["global_pool"], args["fc_norm"], args["pretrain"]) == ("avg", True, False)
    with torch.device("meta"):
        classifier = create_encoder("mvit_v2_s", args, num_classes=400)
    assert n_params(classifier) == 36_475_120
