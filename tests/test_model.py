"""MaskFeat around timm's ViT (MaskableViT): gradients, the [MASK] token, the masked loss, weight decay groups,
and the image encoder against plain timm."""

from __future__ import annotations

import pytest
import timm
import torch

from maskfeat.models import ARCHITECTURES, MaskableViT, MaskFeat, create_encoder, encoder_model_args, masked_mse
from maskfeat.optim import build_optimizer, build_scheduler, scaled_lr
from maskfeat.targets import build_target


def tiny_maskfeat(
    name: str = "vit_tiny_patch16_224",
    img: int = 32,
    patch: int = 16,
    depth: int = 2,
    target: str = "hog",
    cell: int = 8,
    **sizes: int,
) -> MaskFeat:
    args = encoder_model_args(img, patch_size=patch, depth=depth, **sizes)
    return MaskFeat(create_encoder(name, args), build_target(target, patch, cell_size=cell))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_trains_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = tiny_maskfeat(name, img=32, patch=16, depth=1)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.tensor([[True, False], [False, True]]).expand(2, 2, 2)
    loss, pred, target = model(x, mask)
    assert pred.shape == target.shape == (2, 4, 108)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_masked_mse_matches_a_direct_computation_and_ignores_unmasked_predictions():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 10, 7, generator=g), torch.randn(3, 10, 7, generator=g)
    mask = torch.rand(3, 10, generator=g) < 0.4
    expected = ((pred[mask] - target[mask]) ** 2).mean()
    loss = masked_mse(pred, target, mask)
    torch.testing.assert_close(loss, expected)
    changed = pred.clone()
    changed[~mask] += 100.0  # predictions where the model could see do not count
    assert masked_mse(changed, target, mask) == loss
    changed[mask] += 1.0
    assert masked_mse(changed, target, mask) > loss


def test_model_loss_ignores_the_head_output_at_unmasked_positions():
    torch.manual_seed(0)
    model = tiny_maskfeat(img=32)
    x = torch.randn(1, 3, 32, 32)
    mask = torch.tensor([[[True, False], [False, False]]])
    loss, pred, target = model(x, mask)
    pred2 = pred.clone()
    pred2[0, 1:] = 0  # tokens 1..3 are visible
    assert masked_mse(pred2, target, mask.flatten(1)) == loss


def test_mask_token_replaces_patch_embeddings_before_position_embeddings():
    torch.manual_seed(0)
    model = tiny_maskfeat(img=32).eval()
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    all_masked = torch.ones(1, 2, 2, dtype=torch.bool)
    fa, fb = model.forward_features(a, all_masked), model.forward_features(b, all_masked)
    torch.testing.assert_close(fa, fb)  # the image is not seen at all
    assert not torch.allclose(fa[0, 0], fa[0, 1])  # position embeddings still tell the tokens apart
    none = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert not torch.allclose(model.forward_features(a, none), model.forward_features(b, none))


def test_unmasked_forward_equals_the_plain_timm_encoder():
    torch.manual_seed(0)
    model = tiny_maskfeat(img=48).eval()
    x = torch.randn(2, 3, 48, 48)
    ours = model.forward_features(x, torch.zeros(2, 3, 3, dtype=torch.bool))
    theirs = model.encoder.forward_features(x)[:, model.encoder.num_prefix_tokens :]
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_image_encoder_is_timms_vit_parameter_for_parameter(name):
    with torch.device("meta"):  # full size: the sizes table must be timm's
        ours, theirs = create_encoder(name, encoder_model_args(224)), timm.create_model(name, num_classes=0)
    assert isinstance(ours, MaskableViT) and type(theirs) is timm.models.vision_transformer.VisionTransformer
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.pretrained_cfg == theirs.pretrained_cfg
    patch = ARCHITECTURES[name]
    assert ours.patch_grid == ours.output_grid == (1, 224 // patch, 224 // patch) and ours.clip_size == (1, 224, 224)


def test_image_encoder_initialises_and_computes_as_timm():
    args = encoder_model_args(32, depth=2, global_pool="avg", fc_norm=False)
    torch.manual_seed(0)
    ours = create_encoder("vit_tiny_patch16_224", args, num_classes=3, drop_path=0.1).eval()
    torch.manual_seed(0)
    theirs = timm.create_model("vit_tiny_patch16_224", num_classes=3, drop_path_rate=0.1, **args).eval()
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k  # same names, same order, same random initialisation
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
        # The masked path (the only private timm call, _pos_embed, inside) with nothing masked is timm's forward.
        nothing = torch.zeros(2, *ours.patch_grid, dtype=torch.bool)
        token = torch.randn(ours.embed_dim)
        torch.testing.assert_close(ours.forward_features(x, nothing, token), theirs.forward_features(x))
        ours.set_grad_checkpointing(True)
        torch.testing.assert_close(ours.forward_features(x, nothing, token), theirs.forward_features(x))


def test_image_encoder_interface_and_masked_tokens():
    torch.manual_seed(0)
    enc = create_encoder("vit_tiny_patch16_224", encoder_model_args(32, depth=1)).eval()
    assert enc.embed_dim == enc.num_features == 192 and enc.no_weight_decay() and enc.group_matcher()["blocks"]
    x = torch.randn(2, 3, 32, 32)
    mask = torch.tensor([[True, False, False, True], [False] * 4]).reshape(2, 1, 2, 2)
    token = torch.randn(192)
    with torch.no_grad():
        # what the blocks see: the masked patch embeddings are the token (before position embeddings)
        embedded = enc.patch_embed(x)
        embedded[0, [0, 3]] = token
        expected = enc.norm(enc.blocks(enc._add_position(embedded)))
        torch.testing.assert_close(enc.forward_features(x, mask, token), expected)
    with pytest.raises(ValueError, match="mask_token"):
        enc.forward_features(x, mask)


def test_non_square_image_and_pixel_target():
    torch.manual_seed(0)
    args = encoder_model_args((32, 64), patch_size=16, depth=1)
    model = MaskFeat(create_encoder("vit_tiny_patch16_224", args), build_target("pixel", 16))
    loss, pred, target = model(torch.randn(2, 3, 32, 64), torch.rand(2, 2, 4) < 0.5)
    assert pred.shape == target.shape == (2, 8, 768)
    # norm_pix: every target patch has zero mean and unit variance
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1), torch.ones(2, 8), atol=1e-3, rtol=0)


def test_weight_decay_groups_exclude_1d_params_position_embeddings_and_tokens():
    model = tiny_maskfeat()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    for name in (
        "mask_token",
        "encoder.pos_embed",
        "encoder.cls_token",
        "encoder.norm.weight",
        "head.bias",
        "encoder.blocks.0.attn.qkv.bias",
    ):
        assert by_id[id(names[name])] == 0.0, name
    for name in ("head.weight", "encoder.blocks.0.attn.qkv.weight", "encoder.patch_embed.proj.weight"):
        assert by_id[id(names[name])] == 0.05, name
    assert len(by_id) == len(names)


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_the_minimum():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    sched = build_scheduler(opt, total_steps=110, warmup_steps=10, min_lr=1e-6, warmup_lr=1e-6)
    lrs = []
    for step in range(110):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[5] == pytest.approx(1e-6 + 5 * (1e-3 - 1e-6) / 10)
    assert lrs[10] == pytest.approx(1e-3)
    # cosine from the peak at step 10 to min_lr at step 110: halfway it is the midpoint
    assert lrs[60] == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-6)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert scaled_lr(None, 2e-4, 2048) == pytest.approx(1.6e-3)
    assert scaled_lr(3e-3, 2e-4, 2048) == 3e-3


def test_masked_hog_is_learned_when_the_context_predicts_it():
    """End to end through masks, [MASK] token, HOG target and loss: on images of oriented stripes the visible
    patches tell the orientation of the masked ones, so the masked-HOG loss must fall far below its start."""
    import math

    from maskfeat.masking import block_mask

    torch.manual_seed(0)
    model = tiny_maskfeat(img=32, patch=8, cell=4, depth=2, embed_dim=64, num_heads=2)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(160):
        angle = torch.rand(16, 1, 1, generator=g) * math.pi
        freq = torch.rand(16, 1, 1, generator=g) * 0.5 + 0.3
        x = torch.sin((xx * angle.cos() + yy * angle.sin()) * freq)[:, None].expand(16, 3, 32, 32)
        mask = torch.stack([block_mask(4, 4, 0.4, generator=step * 16 + i) for i in range(16)])
        loss = model(x, mask)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (first, last)  # measured: 0.107 -> 0.039; predicting the mean stays near 0.1
