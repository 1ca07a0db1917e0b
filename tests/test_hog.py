"""Tests of maskfeat.hog against an independent float64 NumPy implementation of the official MaskFeat HOG
(the definition in maskfeat.hog's docstring)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import maskfeat.hog as hog_module
from maskfeat.hog import HOG, hog_patch_targets

KX = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
KY = KX.T


def reference_hog(
    x: np.ndarray, nbins: int = 9, cell: int = 8, gaussian_window: int = 0, margin: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """The HOG definition (maskfeat.hog's docstring) in float64 NumPy, written independently of the implementation
    under test.

    Args:
        x: (B, C, H, W) array.
        margin: Angular distance (radians) to a bin boundary under which a pixel counts as "near a boundary".

    Returns:
        hist: (B, C, nbins, H // cell, W // cell) normalised histograms.
        near: (B, C, H // cell, W // cell) bool, True for cells holding a pixel whose angle lies within `margin`
            of a bin boundary (where float32 rounding may legitimately pick the other bin). Exact ties (gx == 0 or
            gy == 0: angles 0, +-pi/2, +-pi, computed exactly in float32 as well) do not count as near.
    """
    x = np.asarray(x, dtype=np.float64)
    B, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    gx = np.zeros((B, C, H, W))
    gy = np.zeros((B, C, H, W))
    for u in range(3):  # explicit cross-correlation, as conv2d computes it
        for v in range(3):
            gx += KX[u, v] * xp[:, :, u : u + H, v : v + W]
            gy += KY[u, v] * xp[:, :, u : u + H, v : v + W]
    mag = np.sqrt(gx**2 + gy**2)
    phase = np.arctan2(gx, gy)
    q = phase / np.pi * nbins
    bins = np.floor(q).astype(np.int64) % nbins
    near_pixel = (np.abs(q - np.round(q)) * np.pi / nbins < margin) & (gx != 0) & (gy != 0)
    if gaussian_window:
        n = np.arange(gaussian_window, dtype=np.float64)
        w1 = np.exp(-0.5 * ((n - n.mean()) / (gaussian_window // 2)) ** 2)
        g2 = np.outer(w1, w1)
        g2 /= g2.sum()
        mag = mag * np.tile(g2, (H // gaussian_window, W // gaussian_window))
    hist = np.zeros((B, C, nbins, H // cell, W // cell))
    bi, ci, hi, wi = np.meshgrid(np.arange(B), np.arange(C), np.arange(H), np.arange(W), indexing="ij")
    np.add.at(hist, (bi, ci, bins, hi // cell, wi // cell), mag)
    norm = np.sqrt((hist**2).sum(axis=2, keepdims=True))
    hist = hist / np.maximum(norm, 1e-12)
    near = near_pixel.reshape(B, C, H // cell, cell, W // cell, cell).any(axis=(3, 5))
    return hist, near


def assert_matches_reference(out: torch.Tensor, ref: np.ndarray, near: np.ndarray, atol: float = 1e-5) -> None:
    assert out.dtype == torch.float32
    assert tuple(out.shape) == ref.shape
    keep = ~near[:, :, None]  # broadcast over the bins
    assert near.mean() < 0.05, "too many near-boundary cells for the comparison to mean much"
    diff = np.abs(out.numpy().astype(np.float64) - ref)
    assert np.all(diff[np.broadcast_to(keep, diff.shape)] < atol), (
        f"max diff {diff[np.broadcast_to(keep, diff.shape)].max()}"
    )


def patch_vectors_reference(hist: np.ndarray, patch: int, cell: int) -> np.ndarray:
    """Per-patch target vectors from reference histograms by the official index formula
    ``((c * nbins + b) * k + i) * k + j``, with explicit loops."""
    B, C, nbins, Hc, Wc = hist.shape
    k = patch // cell
    hp, wp = Hc // k, Wc // k
    out = np.zeros((B, hp * wp, C * nbins * k * k))
    for b in range(B):
        for ph in range(hp):
            for pw in range(wp):
                for c in range(C):
                    for o in range(nbins):
                        for i in range(k):
                            for j in range(k):
                                out[b, ph * wp + pw, ((c * nbins + o) * k + i) * k + j] = hist[
                                    b, c, o, ph * k + i, pw * k + j
                                ]
    return out


def integer_images(shape: tuple[int, ...], high: int = 16, seed: int = 0) -> torch.Tensor:
    """Small integer-valued images: exact gradients in float32, exact ties (gx == 0), and no near-ties
    (with |g| <= 4 * 2 * high, an irrational bin boundary is never closer than ~1e-4 rad)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g).to(torch.float32)


def random_images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32)


@pytest.mark.parametrize(
    "shape", [(1, 1, 8, 8), (2, 3, 32, 32), (1, 3, 24, 40), (3, 1, 16, 48), (2, 2, 40, 24), (4, 3, 16, 16)]
)
def test_matches_reference_random(shape: tuple[int, int, int, int]) -> None:
    x = random_images(shape, seed=sum(shape))
    ref, near = reference_hog(x.double().numpy())
    assert_matches_reference(HOG()(x), ref, near)


def test_matches_reference_other_settings() -> None:
    x = random_images((2, 3, 16, 24), seed=3)
    ref, near = reference_hog(x.double().numpy(), nbins=6, cell=4)
    assert_matches_reference(HOG(nbins=6, cell_size=4)(x), ref, near)
    ref, near = reference_hog(x.double().numpy(), nbins=18, cell=8)
    assert_matches_reference(HOG(nbins=18, cell_size=8)(x), ref, near)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 1, 24, 40)])
def test_integer_images_match_exactly_everywhere(shape: tuple[int, int, int, int]) -> None:
    # Integer images hit exact ties (gx == 0 or gy == 0); every cell must agree, none is excluded.
    x = integer_images(shape, seed=1)
    ref, _ = reference_hog(x.double().numpy())
    out = HOG()(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    x = integer_images(shape, high=256, seed=2)  # 8-bit range: still far from boundaries at this size
    ref, near = reference_hog(x.double().numpy())
    assert not near.any()
    np.testing.assert_allclose(HOG()(x).numpy(), ref, rtol=0, atol=1e-6)


def test_pure_edge_directions_land_in_the_defined_bins() -> None:
    H = W = 16
    rows = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    cols = torch.arange(W, dtype=torch.float32)[None, :].expand(H, W)
    # x = row: gx = 0, gy < 0 -> atan2 = pi -> bin 9 mod 9 = 0. x = -row: gy > 0 -> atan2 = 0 -> bin 0.
    # x = col: gy = 0, gx < 0 -> -pi/2 -> floor(-4.5) mod 9 = 4. x = -col: pi/2 -> 4.
    x = torch.stack([rows, -rows, cols, -cols]).unsqueeze(0)
    out = HOG()(x)
    ref, _ = reference_hog(x.double().numpy())
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-6)
    interior = out[0, :, :, 1, 1]  # a cell away from the reflected border
    expected_bin = torch.tensor([0, 0, 4, 4])
    assert torch.equal(interior.argmax(dim=1), expected_bin)
    assert torch.allclose(interior.max(dim=1).values, torch.ones(4))


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 2, 32, 48)])
def test_gaussian_window(shape: tuple[int, int, int, int]) -> None:
    x = random_images(shape, seed=7)
    ref, near = reference_hog(x.double().numpy(), gaussian_window=16)
    hog = HOG(gaussian_window=16)
    assert_matches_reference(hog(x), ref, near)
    # The weighting changes the result (it is not a no-op).
    assert (hog(x) - HOG()(x)).abs().max() > 1e-3


def test_constant_image_gives_zero_histograms() -> None:
    out = HOG()(torch.full((2, 3, 16, 24), 0.7))
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out) == 0


def test_flat_regions_give_exactly_zero_histograms() -> None:
    # A normalised image whose left half is flat (e.g. a padded border): cells whose 3x3 neighbourhoods are all
    # flat must be exactly zero, not rounding noise blown up to unit vectors by the normalisation.
    raw = torch.rand((1, 3, 32, 64), generator=torch.Generator().manual_seed(16))
    raw[..., :32] = 0.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = HOG()((raw - mean) / std)
    assert torch.count_nonzero(out[..., :3]) == 0  # cell columns 0-2 see only flat pixels
    assert torch.all(out[..., 4:].norm(dim=2) > 0.99)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.float32])
def test_output_is_float32_for_any_input_dtype(dtype: torch.dtype) -> None:
    x = integer_images((2, 3, 16, 16), seed=4).to(dtype)  # small integers: exact in every dtype
    out = HOG()(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, HOG()(x.float()), rtol=0, atol=0)


def test_fp32_inside_autocast() -> None:
    x = random_images((2, 3, 32, 32), seed=5)
    expected = HOG()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = HOG()(x)
        targets = hog_patch_targets(x)
    assert out.dtype == torch.float32 and targets.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_no_grad_and_no_state() -> None:
    x = random_images((1, 3, 16, 16)).requires_grad_(True)
    out = HOG()(x)
    assert not out.requires_grad
    assert not hog_patch_targets(x).requires_grad
    for hog in (HOG(), HOG(gaussian_window=16)):
        assert list(hog.parameters()) == []
        assert hog.state_dict() == {}
    assert len(list(HOG(gaussian_window=16).buffers())) == 1


def test_invariant_to_per_channel_affine_normalisation() -> None:
    # Exact arithmetic: integer images, power-of-two scales, integer shifts -> gradients scale exactly.
    x = integer_images((2, 3, 32, 32), seed=6)
    scale = torch.tensor([2.0, 0.5, 4.0]).view(1, 3, 1, 1)
    shift = torch.tensor([-3.0, 7.0, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(HOG()((x - shift) * scale), HOG()(x), rtol=0, atol=1e-6)
    # Realistic: ImageNet mean/std normalisation of [0, 1] images, against the reference on the raw images.
    raw = torch.rand((2, 3, 32, 40), generator=torch.Generator().manual_seed(8))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref, near = reference_hog(raw.double().numpy(), margin=1e-5)
    assert_matches_reference(HOG()((raw - mean) / std), ref, near, atol=1e-5)


def test_chunked_computation_matches_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    x = random_images((5, 3, 16, 24), seed=9)  # 15 planes
    whole = HOG()(x)
    monkeypatch.setattr(hog_module, "_CPU_CHUNK_PIXELS", 4 * 16 * 24)  # chunks of 4 planes, last one of 3
    chunked = HOG()(x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(HOG().cell_histograms(x), whole.permute(0, 1, 3, 4, 2), rtol=0, atol=0)


def test_non_contiguous_input() -> None:
    x = random_images((2, 3, 16, 32), seed=10)
    expected = HOG()(x)
    torch.testing.assert_close(HOG()(x.contiguous(memory_format=torch.channels_last)), expected, rtol=0, atol=0)
    wide = random_images((2, 3, 16, 64), seed=10)
    view = wide[..., ::2]
    torch.testing.assert_close(HOG()(view), HOG()(view.contiguous()), rtol=0, atol=0)


def test_nan_input_does_not_crash() -> None:
    x = random_images((1, 1, 16, 16), seed=11)
    x[0, 0, 3, 3] = float("nan")
    out = HOG()(x)
    assert torch.isnan(out[0, 0, :, 0, 0]).all()  # the cell that sees the NaN
    assert torch.isfinite(out[0, 0, :, 1, 1]).all()  # a cell that does not


def test_patch_targets_shape_and_feature_order() -> None:
    x = integer_images((2, 3, 32, 48), seed=12)
    targets = hog_patch_targets(x)
    assert targets.shape == (2, (32 // 16) * (48 // 16), 108)
    assert targets.dtype == torch.float32
    ref, _ = reference_hog(x.double().numpy())
    np.testing.assert_allclose(targets.numpy(), patch_vectors_reference(ref, 16, 8), rtol=0, atol=1e-6)
    # Other patch / cell sizes, and one-channel images.
    x1 = integer_images((1, 1, 32, 32), seed=13)
    t1 = hog_patch_targets(x1, patch_size=32, nbins=6, cell_size=8)
    assert t1.shape == (1, 1, 1 * 6 * 4 * 4)
    ref1, _ = reference_hog(x1.double().numpy(), nbins=6, cell=8)
    np.testing.assert_allclose(t1.numpy(), patch_vectors_reference(ref1, 32, 8), rtol=0, atol=1e-6)


def test_patch_targets_with_gaussian_window() -> None:
    x = random_images((1, 3, 32, 32), seed=14)
    ref, near = reference_hog(x.double().numpy(), gaussian_window=16)
    assert not near.any()
    expected = patch_vectors_reference(ref, 16, 8)
    np.testing.assert_allclose(hog_patch_targets(x, gaussian_window=16).numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("temporal_patch", "frame_index"), [(2, 0), (2, 1), (1, 0), (4, 2)])
def test_video_targets(temporal_patch: int, frame_index: int) -> None:
    B, C, T, H, W = 2, 3, 8, 16, 32
    x = integer_images((B, C, T, H, W), seed=15)
    targets = hog_patch_targets(x, temporal_patch=temporal_patch, frame_index=frame_index)
    t = T // temporal_patch
    n = (H // 16) * (W // 16)
    assert targets.shape == (B, t * n, 108)
    for i in range(t):  # ordered (t, h, w): frame i's patches are a contiguous block
        frame = x[:, :, frame_index + i * temporal_patch].double().numpy()
        ref, _ = reference_hog(frame)
        expected = patch_vectors_reference(ref, 16, 8)
        np.testing.assert_allclose(targets[:, i * n : (i + 1) * n].numpy(), expected, rtol=0, atol=1e-6)


def test_patch_targets_reuse_hog_instances() -> None:
    x = random_images((1, 3, 16, 16))
    hog = HOG(gaussian_window=16)
    torch.testing.assert_close(
        hog_patch_targets(x, gaussian_window=16, hog=hog), hog_patch_targets(x, gaussian_window=16)
    )
    assert hog_module._cached_hog(9, 8, 0, x.device) is hog_module._cached_hog(9, 8, 0, x.device)
    with pytest.raises(ValueError, match="nbins"):
        hog_patch_targets(x, hog=HOG(nbins=12))


def test_errors() -> None:
    hog = HOG()
    with pytest.raises(ValueError, match="4-D"):
        hog(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="cell_size"):
        hog(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match="cell_size"):
        hog(torch.zeros(1, 3, 16, 12))
    with pytest.raises(ValueError, match="floating"):
        hog(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="gaussian_window"):
        HOG(gaussian_window=16)(torch.zeros(1, 3, 24, 32))
    for kwargs in ({"nbins": 0}, {"cell_size": 0}, {"gaussian_window": -1}, {"nbins": 2.5}):
        with pytest.raises(ValueError):
            HOG(**kwargs)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="patch_size"):
        hog_patch_targets(x, patch_size=12)
    with pytest.raises(ValueError, match="patch_size"):
        hog_patch_targets(torch.zeros(1, 3, 24, 32), patch_size=16)
    with pytest.raises(ValueError, match="temporal_patch"):
        hog_patch_targets(torch.zeros(1, 3, 3, 16, 16), temporal_patch=2)
    with pytest.raises(ValueError, match="frame_index"):
        hog_patch_targets(torch.zeros(1, 3, 4, 16, 16), temporal_patch=2, frame_index=2)
    with pytest.raises(ValueError, match="shape"):
        hog_patch_targets(torch.zeros(3, 16, 16))


def test_gaussian_kernel_definition() -> None:
    k = hog_module.gaussian_kernel(16)
    assert k.shape == (16, 16) and k.dtype == torch.float32
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-6)
    torch.testing.assert_close(k, k.T)
    assert torch.equal(hog_module.gaussian_kernel(1), torch.ones(1, 1))
