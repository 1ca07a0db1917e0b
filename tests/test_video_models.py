"""Video encoders (VideoViT, MViTv2 on torchvision) and MaskFeat on video, at tiny sizes."""

from __future__ import annotations

import io
import json

import pytest
import timm
import torch
from conftest import SHARED
from timm.optim import create_optimizer_v2
from torchvision.models.video import mvit_v2_s
from torchvision.models.video.mvit import MViT

from maskfeat.hog import hog_patch_targets
from maskfeat.masking import upsample_mask
from maskfeat.models.maskfeat import MaskFeat, mask_factors, target_patch_size
from maskfeat.models.mvit import MVIT_SIZES, MViTEncoder, load_pretrained_mvit
from maskfeat.models.names import VIDEO_ARCHITECTURES
from maskfeat.models.registry import create_encoder, video_encoder_args
from maskfeat.models.video_vit import VIDEO_VIT_SIZES, VideoViT
from maskfeat.targets import HOGTarget

T, S = 4, 32  # clip: 4 frames of 32x32 -> output grid (T/2, S/16, S/16) = (2, 2, 2)
OUT_GRID = (T // 2, S // 16, S // 16)
N_OUT = OUT_GRID[0] * OUT_GRID[1] * OUT_GRID[2]

# Tiny versions of the presets: the preset's stage-1 heads, stage-1 width / 12, a short last stage of two blocks
# (so that a relative position table changes length between the pre-training and fine-tuning variants).
TINY_MVIT = {
    name: {"depths": [1, 1, 1, 2], "embed_dim": cfg["embed_dim"] // 12, "num_heads": cfg["num_heads"]}
    for name, cfg in MVIT_SIZES.items()
}
TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_args(kind: str, **kw) -> dict:
    tiny = TINY_VIT if VIDEO_ARCHITECTURES[kind] == "vit" else TINY_MVIT[kind]
    args = video_encoder_args(kind, img_size=S, num_frames=T, **tiny, **kw)
    return json.loads(json.dumps(args))  # what a checkpoint stores must survive JSON


def tiny_encoder(kind: str, pretrain: bool = True, num_classes: int = 0, **settings) -> VideoViT | MViTEncoder:
    """``settings`` (e.g. ``head_drop``) ride in the model arguments, as create_encoder allows."""
    extra = {"pretrain": pretrain} if VIDEO_ARCHITECTURES[kind] == "mvit" else {}
    return create_encoder(kind, {**tiny_args(kind, **extra), **settings}, num_classes=num_classes)


def clip(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, T, S, S, generator=torch.Generator().manual_seed(seed))


KINDS = ["vit_s", *MVIT_SIZES]


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: on a shared, loaded CPU, threads only add contention (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", KINDS)
def test_pretraining_forward_backward_reaches_every_parameter(kind):
    torch.manual_seed(0)
    model = MaskFeat(tiny_encoder(kind), HOGTarget())
    assert model.output_grid == OUT_GRID
    x = clip()
    mask = torch.zeros(2, *OUT_GRID, dtype=torch.bool)
    mask[0, 0], mask[1, :, 1] = True, True  # some masked, some visible tokens in every sample
    loss, pred, target = model(x, mask)
    assert pred.shape == target.shape == (2, N_OUT, 108)
    # the target is hog_patch_targets' own (t, h, w)-ordered output: the encoder's token grid matches it
    torch.testing.assert_close(target, hog_patch_targets(x, patch_size=16, temporal_patch=2))
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"
    # the mask may also come flattened
    loss2, _, _ = model(x, mask.flatten(1))
    torch.testing.assert_close(loss2, loss)


@pytest.mark.parametrize("kind", KINDS)
def test_all_masked_output_ignores_the_video_but_not_the_position(kind):
    torch.manual_seed(0)
    model = MaskFeat(tiny_encoder(kind), HOGTarget()).eval()
    a, b = clip(1, seed=1), clip(1, seed=2)
    everything = torch.ones(1, *OUT_GRID, dtype=torch.bool)
    with torch.no_grad():
        fa, fb = model.forward_features(a, everything), model.forward_features(b, everything)
        assert fa.shape == (1, N_OUT, model.encoder.num_features)
        torch.testing.assert_close(fa, fb)  # the [MASK] token replaced every patch embedding
        assert not torch.allclose(fa[0, 0], fa[0, 1])  # ...but the tokens still know where they are
        nothing = torch.zeros_like(everything)
        assert not torch.allclose(model.forward_features(a, nothing), model.forward_features(b, nothing))


def test_mvit_mask_is_upsampled_to_the_patch_embedding_grid():
    mask = torch.tensor([[[[True, False], [False, True]]]])  # (1, 1, 2, 2)
    up = upsample_mask(mask, mask_factors((1, 2, 2), (1, 8, 8)))
    assert up.shape == (1, 1, 8, 8)
    assert up[0, 0, :4, :4].all() and up[0, 0, 4:, 4:].all() and not up[0, 0, :4, 4:].any()
    enc = tiny_encoder("mvit_v2_s")
    assert enc.patch_grid == (T // 2, S // 4, S // 4) and enc.output_grid == OUT_GRID
    model = MaskFeat(enc, HOGTarget())
    assert model.mask_factors == (1, 4, 4) and target_patch_size(enc) == (2, 16, 16)
    with pytest.raises(ValueError):
        mask_factors((1, 2, 2), (1, 6, 7))
    # What the encoder sees: each masked output token is a fully masked 4x4 block of patch embeddings.
    seen, encode = [], enc.forward_features
    enc.forward_features = lambda x, mask, token: seen.append(mask) or encode(x, mask, token)
    out_mask = torch.zeros(1, *OUT_GRID, dtype=torch.bool)
    out_mask[0, 1, 0, 1] = True
    with torch.no_grad():
        model.forward_features(clip(1), out_mask)
    expected = torch.zeros(1, *enc.patch_grid, dtype=torch.bool)
    expected[0, 1, 0:4, 4:8] = True
    assert torch.equal(seen[0], expected)


def test_mvit_presets_match_the_paper_and_torchvision():
    expected = {"mvit_v2_s": (16, 768, 8), "mvit_v2_b": (24, 768, 8), "mvit_v2_l": (48, 1152, 16)}
    for name, (blocks, width, heads) in expected.items():
        with torch.device("meta"):  # through timm's registry: the names are registered by maskfeat.models
            enc = timm.create_model(name, pretrain=True)
        assert len(enc.blocks) == blocks and enc.num_features == width
        assert enc.block_setting[-1].num_heads == heads
        assert enc.output_grid == (8, 14, 14)  # pre-training: stride 16 (T/2 x H/16 x W/16)
        with torch.device("meta"):
            assert timm.create_model(name, pretrain=False).output_grid == (8, 7, 7)
    # The supervised layout, mvit_v2_s_tv, is torchvision's mvit_v2_s, parameter for parameter.
    with torch.device("meta"):
        ours, theirs = timm.create_model("mvit_v2_s_tv", num_classes=400), mvit_v2_s()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 34_537_744  # torchvision's documented num_params


def test_full_size_mvit_pretrain_to_finetune_load_resizes_only_the_last_stage_tables():
    with torch.device("meta"):
        pre = timm.create_model("mvit_v2_s", pretrain=True)
        ft = timm.create_model("mvit_v2_s", pretrain=False, num_classes=400)
    report = load_pretrained_mvit(ft, pre.state_dict())
    assert report.missing_keys == ["head.1.bias", "head.1.weight"]
    assert report.unexpected_keys == []
    # block 14 pools q (stride 32) with unpooled kv: 2 * 14 - 1 = 27 either way; block 15: 27 (q 14, kv 7) -> 13
    assert report.resized_keys == {
        "blocks.15.attn.rel_pos_h": ((27, 96), (13, 96)),
        "blocks.15.attn.rel_pos_w": ((27, 96), (13, 96)),
    }


@pytest.mark.parametrize("kind", list(MVIT_SIZES))
def test_finetune_mvit_loads_the_pretrained_weights_and_classifies(kind):
    torch.manual_seed(0)
    pre = MaskFeat(tiny_encoder(kind, pretrain=True), HOGTarget())
    ft = tiny_encoder(kind, pretrain=False, num_classes=5, head_drop=0.0)
    assert ft.output_grid == (T // 2, S // 32, S // 32)
    report = load_pretrained_mvit(ft, pre.state_dict())
    # New in the fine-tuning model: the classifier only. Left over: the pre-training wrapper's token and head.
    assert report.missing_keys == ["head.1.bias", "head.1.weight"]
    assert report.unexpected_keys == ["head.bias", "head.weight", "mask_token"]
    # Only the last stage's second block changes its relative position length (q and kv no longer at stride 16).
    assert set(report.resized_keys) == {"blocks.4.attn.rel_pos_h", "blocks.4.attn.rel_pos_w"}
    pre_state, ft_state = pre.encoder.state_dict(), ft.state_dict()
    for k, v in pre_state.items():
        if k not in report.resized_keys:
            assert torch.equal(ft_state[k], v), k
    # Up to the last stage both variants compute the same thing.
    x = clip()
    with torch.no_grad():
        outs = []
        for enc in (pre.encoder.eval(), ft.eval()):
            h = enc.pos_encoding(enc.conv_proj(x).flatten(2).transpose(1, 2))
            thw = enc.patch_grid
            for block in enc.blocks[:3]:
                h, thw = block(h, thw)
            outs.append(h)
        torch.testing.assert_close(outs[0], outs[1])
        logits = ft(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_mvit_classification_equals_torchvision_forward():
    torch.manual_seed(0)
    ours = tiny_encoder("mvit_v2_s", pretrain=False, num_classes=5, head_drop=0.0).eval()
    theirs = MViT(
        spatial_size=(S, S),
        temporal_size=T,
        block_setting=ours.block_setting,
        residual_pool=True,
        residual_with_cls_embed=False,
        rel_pos_embed=True,
        proj_after_attn=False,
        num_classes=5,
    ).eval()
    theirs.load_state_dict(ours.state_dict())  # strict: same names and shapes
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("kind", ["vit_s", "mvit_v2_s"])
def test_export_and_rebuild_from_json_args_gives_identical_outputs(kind):
    torch.manual_seed(0)
    args = tiny_args(kind)
    enc = create_encoder(kind, args, num_classes=3).eval()
    buf = io.BytesIO()
    torch.save({"kind": kind, "args": json.dumps(args), "state_dict": enc.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    torch.manual_seed(1)  # another initialisation, overwritten by the weights
    rebuilt = create_encoder(saved["kind"], json.loads(saved["args"]), num_classes=3).eval()
    rebuilt.load_state_dict(saved["state_dict"])
    x = clip()
    mask = torch.rand(2, *enc.patch_grid, generator=torch.Generator().manual_seed(0)) < 0.5
    token = torch.randn(enc.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), enc(x), rtol=0, atol=0)
        torch.testing.assert_close(rebuilt.forward_features(x, mask, token), enc.forward_features(x, mask, token))


@pytest.mark.parametrize("kind", ["vit_s", "mvit_v2_s"])
def test_layer_decay_param_groups(kind):
    enc = tiny_encoder(kind, pretrain=False, num_classes=3)
    opt = create_optimizer_v2(enc, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    names = {id(p): n for n, p in enc.named_parameters()}
    seen = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())  # every parameter exactly once
    scale = {names[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    n_layers = len(enc.blocks) + 2  # embedding, one per block, final norm + head
    assert len(set(scale.values())) == n_layers
    stem, head = ("patch_embed.weight", "head.weight") if kind == "vit_s" else ("conv_proj.weight", "head.1.weight")
    assert scale[stem] == pytest.approx(0.75 ** (n_layers - 1)) and scale[head] == 1.0
    assert scale["blocks.0.norm1.weight"] == pytest.approx(0.75 ** (n_layers - 2))
    no_decay = ["pos_embed_spatial", "cls_token"] if kind == "vit_s" else ["blocks.0.attn.rel_pos_h"]
    assert all(decay[n] == 0.0 for n in no_decay) and decay[head] == 0.05


@pytest.mark.parametrize("kind", ["vit_s", "mvit_v2_s"])
def test_gradient_checkpointing_gives_the_same_result(kind):
    torch.manual_seed(0)
    enc = tiny_encoder(kind).train()
    x = clip()
    grads = []
    for checkpointing in (False, True):
        enc.set_grad_checkpointing(checkpointing)
        enc.zero_grad()
        out = enc.forward_features(x)
        out.square().sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = grads
    torch.testing.assert_close(plain, checkpointed)
    assert plain_grads.keys() == checkpointed_grads.keys() and "blocks.0.norm1.weight" in plain_grads
    for name, g in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], g, msg=name)


def test_video_vit_presets_and_other_clip_lengths():
    assert {k: (v["embed_dim"], v["depth"], v["num_heads"]) for k, v in VIDEO_VIT_SIZES.items()} == {
        "vit_s": (384, 12, 6),
        "vit_b": (768, 12, 12),
        "vit_l": (1024, 24, 16),
    }
    with torch.device("meta"):
        vit_b = create_encoder("vit_b", video_encoder_args("vit_b"))
    assert vit_b.patch_grid == (8, 14, 14) and vit_b.pos_embed_spatial.shape == (1, 196, 768)
    enc = tiny_encoder("vit_s")
    # the separable position embeddings resample to another clip length / size
    out = enc.forward_features(torch.randn(1, 3, 2 * T, 2 * S, S))
    assert out.shape == (1, 1 + T * 4 * 2, 32)  # the class token first, as timm's forward_features


def test_pretraining_weight_decay_groups_exclude_tokens_and_relative_position_tables():
    from maskfeat.optim import build_optimizer

    model = MaskFeat(tiny_encoder("mvit_v2_s"), HOGTarget())
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(decay) == len(params)
    for name in ("mask_token", "encoder.pos_encoding.class_token", "encoder.blocks.2.attn.rel_pos_t"):
        assert decay[id(params[name])] == 0.0, name
    for name in ("head.weight", "encoder.conv_proj.weight", "encoder.blocks.0.attn.qkv.weight"):
        assert decay[id(params[name])] == 0.05, name


@pytest.mark.parametrize("kind", ["vit_s", "mvit_v2_s"])
def test_video_pixel_target_is_each_space_time_patch_normalised(kind):
    from maskfeat.targets import build_target

    torch.manual_seed(0)
    target = build_target("pixel", 16, temporal_patch=2)
    model = MaskFeat(tiny_encoder(kind), target)
    x = clip()
    mask = torch.zeros(2, *OUT_GRID, dtype=torch.bool)
    mask[:, 1] = True
    loss, pred, tgt = model(x, mask)
    assert target.dim == 2 * 16 * 16 * 3 and pred.shape == tgt.shape == (2, N_OUT, 1536)
    # independent reference: loop over the (t, h, w) token grid, take the 2x16x16 box as (frame, row, col, channel)
    for b in range(2):
        n = 0
        for t in range(OUT_GRID[0]):
            for i in range(OUT_GRID[1]):
                for j in range(OUT_GRID[2]):
                    box = x[b, :, 2 * t : 2 * t + 2, 16 * i : 16 * i + 16, 16 * j : 16 * j + 16]
                    v = box.permute(1, 2, 3, 0).reshape(-1).double()
                    ref = (v - v.mean()) / (v.var() + 1e-6).sqrt()
                    torch.testing.assert_close(tgt[b, n].double(), ref, atol=1e-5, rtol=1e-5)
                    n += 1
    assert torch.isfinite(loss)
    loss.backward()


def test_video_encoders_are_in_timms_registry_with_the_encoder_interface():
    # timm has no model of these names (its MViTv2 is mvitv2_small, ...): ours are the ones registered.
    assert type(timm.create_model("vit_s", **tiny_args("vit_s"))) is VideoViT
    for kind in KINDS:
        enc = tiny_encoder(kind)
        assert len(enc.patch_grid) == len(enc.output_grid) == len(enc.clip_size) == 3, kind
        assert enc.clip_size == (T, S, S) and enc.output_grid == OUT_GRID
        assert enc.embed_dim > 0 and enc.num_features > 0
        assert enc.no_weight_decay() and enc.group_matcher()["blocks"]
        tokens = enc.forward_features(clip(1))
        assert tokens.shape == (1, enc.num_prefix_tokens + N_OUT, enc.num_features)
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model("mvit_v2_s", pretrained=True)


@pytest.mark.skipif(not (SHARED / "fixtures" / "slowfast" / "mvit_video_pt.pyth").is_file(),
                    reason="no ../shared/fixtures/slowfast")  # fmt: skip
def test_official_pretrained_mvit_fine_tunes_at_a_larger_crop():
    """The paper fine-tunes MViT-L at 312 and 352 px from 224-px pre-training: the official (converted) weights load
    into a fine-tuning model of a larger crop, the relative position tables resampled, every block weight kept."""
    from maskfeat.convert import convert

    result = convert(str(SHARED / "fixtures" / "slowfast" / "mvit_video_pt.pyth"))
    args = dict(result.encoder_meta["model_args"])
    assert args["img_size"] in (96, [96, 96])
    args.update(img_size=128, pretrain=False)  # 96 -> 128 px: 24x24 -> 32x32 patches
    ft = timm.create_model(result.encoder_meta["architecture"], num_classes=5, **args)
    report = load_pretrained_mvit(ft, result.encoder_state)
    assert report.missing_keys and all(k.startswith("head.") for k in report.missing_keys)  # only the classifier
    assert report.resized_keys and all(k.rsplit(".", 1)[-1] in ("rel_pos_h", "rel_pos_w") for k in report.resized_keys)
    kept = {k: v for k, v in result.encoder_state.items() if k not in report.resized_keys and not k.startswith("head")}
    own = ft.state_dict()
    assert all(torch.equal(own[k], v) for k, v in kept.items())
    with torch.no_grad():
        logits = ft.eval()(torch.randn(1, 3, 8, 128, 128))
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()


def test_mvit_runs_other_frame_sizes_and_keeps_its_outputs_at_the_size_it_is_built_for(monkeypatch):
    """Each attention resamples its relative position tables (linearly, as loading weights of another size does) to
    what the input's grid needs: at the built size nothing is resampled, a wider clip runs, and the parameters stay."""
    from maskfeat.models.resample import resample_positions

    torch.manual_seed(0)
    enc = tiny_encoder("mvit_v2_s", pretrain=False).eval()
    shapes = {k: v.shape for k, v in enc.state_dict().items()}
    resampled = []
    interpolate = torch.nn.functional.interpolate

    def spy(t, *args, **kwargs):
        resampled.append(tuple(t.shape))
        return interpolate(t, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    x, wide, square = clip(1), torch.randn(1, 3, T, S, 2 * S + 16), torch.randn(1, 3, T, 2 * S, 2 * S)
    with torch.no_grad():
        before = enc.forward_features(x)
        assert not resampled  # every table has the length the built size needs: used as it is
        out = enc.forward_features(wide)  # 32 x 80 frames: the W tables stretched, T and H untouched
        assert resampled and out.shape == (1, 1 + (T // 2) * (S // 32) * -(-(2 * S + 16) // 32), enc.num_features)
        assert torch.equal(enc.forward_features(x), before)  # bit for bit: the wide call changed nothing
        assert {k: v.shape for k, v in enc.state_dict().items()} == shapes
        # a model built for 64 x 64 frames, given this one's tables resampled, gives what this one gives at 64 x 64
        big = create_encoder("mvit_v2_s", {**tiny_args("mvit_v2_s", pretrain=False), "img_size": 2 * S})
        state, names = resample_positions(big, enc.state_dict())
        assert names and all(n.rsplit(".", 1)[-1] in ("rel_pos_h", "rel_pos_w") for n in names)
        big.load_state_dict(state)  # strict
        resampled.clear()
        reference = big.eval().forward_features(square)
        assert not resampled  # built for 64 x 64: its tables are used as they are
        assert torch.equal(enc.forward_features(square), reference)


def test_video_vit_model_patch_size_sets_the_spatial_tubelet_and_its_hog_target():
    from maskfeat.builder.models import build_pretrain_model
    from maskfeat.config import ConfigError, load_config

    video = ["model.name=vit_s", "model.embed_dim=32", "model.depth=2", "model.num_heads=2", f"data.image_size={S}",
             f"video.num_frames={T}", "target.cell_size=8"]  # fmt: skip
    model, meta = build_pretrain_model(load_config("pretrain", None, [*video, "model.patch_size=8"]))
    assert meta["model_args"]["tubelet"] == [2, 8, 8]
    assert model.output_grid == (T // 2, S // 8, S // 8) and model.target.dim == 3 * 9  # one 8-px HOG cell a patch
    mask = torch.zeros(2, *model.output_grid, dtype=torch.bool)
    mask[:, 0] = True
    loss, pred, target = model(clip(), mask)
    assert pred.shape == target.shape == (2, T // 2 * (S // 8) ** 2, 27) and torch.isfinite(loss)
    default, _ = build_pretrain_model(load_config("pretrain", None, video))
    assert default.output_grid == OUT_GRID  # unset: the 2x16x16 tubelets
    with pytest.raises(ConfigError, match="patch size 8 is not divisible"):
        load_config("pretrain", None, [*video, "model.patch_size=8", "target.cell_size=16"])
    with pytest.raises(ConfigError, match="model.patch_size does not apply to MViT"):
        load_config("pretrain", None, ["model.name=mvit_v2_s", "data.image_size=32", "model.patch_size=8"])
