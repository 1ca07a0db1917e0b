"""Histogram-of-oriented-gradients (HOG) targets: the official MaskFeat definition (Wei et al., CVPR 2022, and
its reference code in SlowFast), which this module documents.

Per channel, independently:

1. reflect-pad the channel by 1 pixel (``F.pad(..., mode="reflect")``);
2. Sobel gradients by cross-correlation (as ``conv2d`` computes it) with ``kx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]``
   and ``ky = kx.T``: ``gx``, ``gy`` of shape ``(H, W)``;
3. magnitude ``sqrt(gx^2 + gy^2)`` and phase ``atan2(gx, gy)`` (gx first);
4. hard bin ``floor(phase / pi * nbins) mod nbins`` (Python's modulo: 0..nbins-1; unsigned, over 180 degrees);
5. optionally (``gaussian_window > 0``) the magnitude weighted by a Gaussian window tiled over the image;
6. per ``cell_size x cell_size`` cell, the sum of the magnitudes falling in each bin;
7. every cell's ``nbins`` histogram L2-normalised, ``v / max(||v||, 1e-12)`` (``F.normalize``).

A per-channel affine normalisation of the input (mean/std) does not change the result in exact arithmetic, so the
HOG may be taken on the normalised tensor the model sees.

The implementation computes the same thing as the straightforward one (grouped ``conv2d``, ``atan2``, a 5-D
``scatter_add`` into ``(B, C, nbins, H, W)``, unfold-sum into cells, ``normalize``), about 10x faster on a CPU
(see :meth:`HOG._histograms_` for how): given the same gradients, every pixel's bin comes from the very same
float32 ops and the histograms agree up to float32 rounding. Only the gradients are summed in another order
(differences first), and where float32 rounding of a gradient decides its bin, the two can differ:

* Exactly vertical gradients (``gx = 0``) lie on the boundary between bin 0 and bin ``nbins - 1``: the sign of the
  rounding error of ``gx`` picks the bin. They are common in 8-bit photographs: 1.9-16% of the pixels of six
  scikit-image photos and of 200 CIFAR-10 images. On integer-valued input (pixel values 0..255) every gradient is
  an exact sum of integers, here as with ``conv2d``, and every bin is exact. On the normalised input the model
  sees, ``(x / 255 - mean) / std``, neither is exact: on the same images 0.2-0.7% of all pixels (each with a
  gradient) land in the other bin here (0.2-0.9% with ``conv2d``), all of them pixels with ``gx = 0``; that changes
  12-31% of the cell histograms by more than 1e-3 (``conv2d``: 13-38%), and the two implementations differ on
  5-27% of the cells (``bench/hog_exactness.py``). No pixel whose exact ``gx`` is non-zero was binned differently.
* Flat regions: the difference of two equal pixels is exactly zero here, so a cell without any gradient gets an
  all-zero histogram; ``conv2d``'s tap-by-tap sum can leave rounding noise there, which normalisation turns into
  an arbitrary unit histogram (60-100% of the flat cells of those photos, on normalised input).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HOG", "gaussian_kernel", "hog_patch_targets"]

# Pixels per processing chunk. On a CPU a chunk of ~2^18 pixels keeps the ~10 temporaries of one chunk in the
# L2/L3 caches and below the allocator's mmap threshold (no page faults), which is worth 5-10x over whole-batch
# elementwise ops. On accelerators chunking only bounds the transient memory (~40 bytes per pixel of a chunk).
_CPU_CHUNK_PIXELS = 1 << 18
_DEVICE_CHUNK_PIXELS = 1 << 23


def gaussian_kernel(window: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``window x window`` Gaussian that weights the magnitudes (step 5 of the definition above; the official
    ``get_gkern``).

    1-D weights ``exp(-0.5 * ((n - mean(n)) / (window // 2)) ** 2)`` for ``n = 0..window-1``, outer product,
    normalised to sum 1. Computed in float64 and then cast. ``window == 1`` gives ``[[1.0]]``.

    Args:
        window: Side of the square kernel, >= 1.
        dtype: Dtype of the result.

    Returns:
        Tensor of shape ``(window, window)`` summing to 1.
    """
    if window < 1:
        raise ValueError(f"gaussian window must be >= 1, got {window}")
    n = torch.arange(window, dtype=torch.float64)
    n = n - n.mean()
    std = window // 2
    w = torch.exp(-0.5 * (n / std) ** 2) if std > 0 else torch.ones_like(n)
    k = w[:, None] * w[None, :]
    return (k / k.sum()).to(dtype)


class HOG(nn.Module):
    """HOG features per channel, the MaskFeat regression target (the definition in this module's docstring).

    Holds no parameters; the Gaussian window (if any) is a non-persistent buffer, so the module never appears
    in a ``state_dict``. The output is float32, computed without gradients and outside autocast.

    Args:
        nbins: Number of unsigned orientation bins over 180 degrees.
        cell_size: Side of a square histogram cell in pixels.
        gaussian_window: Side of the Gaussian window tiled over the image to weight magnitudes; 0 = off.

    Example:
        >>> hog = HOG()
        >>> hog(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 3, 9, 4, 4])
    """

    gkern: Tensor | None

    def __init__(self, nbins: int = 9, cell_size: int = 8, gaussian_window: int = 0) -> None:
        super().__init__()
        for name, value, low in (
            ("nbins", nbins, 1),
            ("cell_size", cell_size, 1),
            ("gaussian_window", gaussian_window, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"HOG {name} must be an integer >= {low}, got {value!r}")
        self.nbins = nbins
        self.cell_size = cell_size
        self.gaussian_window = gaussian_window
        gkern = gaussian_kernel(gaussian_window) if gaussian_window > 0 else None
        self.register_buffer("gkern", gkern, persistent=False)

    def extra_repr(self) -> str:
        return f"nbins={self.nbins}, cell_size={self.cell_size}, gaussian_window={self.gaussian_window}"

    def forward(self, x: Tensor) -> Tensor:
        """Computes the normalised per-cell orientation histograms.

        Args:
            x: Images ``(B, C, H, W)``, any float dtype, any device; H and W multiples of ``cell_size``
                (and of ``gaussian_window`` when it is on).

        Returns:
            float32 tensor ``(B, C, nbins, H // cell_size, W // cell_size)``; every cell's ``nbins`` vector has
            unit L2 norm, or is all zero where the cell has no gradient.
        """
        self._check_input(x)
        B, C, H, W = x.shape
        cs = self.cell_size
        out = torch.empty(B, C, self.nbins, H // cs, W // cs, dtype=torch.float32, device=x.device)
        self._compute(x, out.permute(0, 1, 3, 4, 2))
        return out

    def cell_histograms(self, x: Tensor) -> Tensor:
        """Same as :meth:`forward` but with the bins last: ``(B, C, H // cell, W // cell, nbins)``, contiguous.

        :func:`hog_patch_targets` uses this layout.
        """
        self._check_input(x)
        B, C, H, W = x.shape
        cs = self.cell_size
        out = torch.empty(B, C, H // cs, W // cs, self.nbins, dtype=torch.float32, device=x.device)
        self._compute(x, out)
        return out

    def _compute(self, x: Tensor, out: Tensor) -> None:
        """Writes the normalised histograms of ``x (B, C, H, W)`` into ``out``, a (strided) ``(B, C, Hc, Wc, nbins)``
        view of the caller's float32 result."""
        B, C, H, W = x.shape
        cs, nb = self.cell_size, self.nbins
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            planes = x.detach().reshape(B * C, H, W).to(torch.float32)
            out = out.flatten(0, 1)  # (B * C, Hc, Wc, nbins), a view
            weight = None
            if self.gkern is not None:
                g = self.gaussian_window
                weight = self.gkern.to(device=x.device, dtype=torch.float32).repeat(H // g, W // g)
            # Scatter offset of every image column: its cell's first slot, plus nbins so that slots are >= 0
            # (2 * nbins + 1 slots per cell, see _histograms_).
            slots = 2 * nb + 1
            col_offset = (torch.arange(W, device=x.device) // cs * slots + nb).to(torch.float32)

            limit = _CPU_CHUNK_PIXELS if x.device.type == "cpu" else _DEVICE_CHUNK_PIXELS
            step = min(B * C, max(1, limit // (H * W)))
            acc = torch.empty(step, H // cs, W // cs, slots, dtype=torch.float32, device=x.device)
            for start in range(0, B * C, step):
                n = min(step, B * C - start)
                chunk_acc = acc[:n].zero_()  # reused: stays in cache, no fresh allocation per chunk
                self._histograms_(planes[start : start + n], chunk_acc, col_offset, weight)
                # Fold the slots back to bins: floor value f in [-nbins, nbins] sits in slot f + nbins and
                # belongs to bin f mod nbins.
                folded = chunk_acc[..., nb : 2 * nb] + chunk_acc[..., :nb]  # (n, Hc, Wc, nbins), contiguous
                folded[..., 0] += chunk_acc[..., 2 * nb]
                # L2 normalisation as F.normalize(folded, dim=-1, eps=1e-12) computes it, written into out.
                norm = torch.linalg.vector_norm(folded, dim=-1, keepdim=True).clamp_min_(1e-12)
                torch.div(folded, norm, out=out[start : start + n])

    def _histograms_(self, planes: Tensor, acc: Tensor, col_offset: Tensor, weight: Tensor | None) -> None:
        """Adds the magnitude histograms of some planes into ``acc`` (in place).

        Tricks, each measured on a 2-core CPU against the straightforward implementation:

        * Sobel as 6 elementwise ops on shifted views of the padded planes (separable, differences first)
          instead of ``conv2d``, which is slow with one input channel per group.
        * The bin is exactly ``floor(atan2(gx, gy) / pi * nbins)`` with the same torch ops (so the same
          float32 rounding), but the Python-style ``mod nbins`` (a slow op on CPU) is skipped: the floor value
          ``f`` in ``[-nbins, nbins]`` indexes slot ``f + nbins`` of ``2 * nbins + 1`` slots per cell, folded
          back to ``f mod nbins`` on the small per-cell result.
        * One ``scatter_add_`` straight into the cells: a row of the scatter is one band of ``cell_size``
          image rows (contiguous in memory), and a pixel's target is ``cell column * slots + slot``; this
          replaces the 9x larger ``(B, C, nbins, H, W)`` scatter and the unfold-sum that follows it.
        * Everything runs on cache-sized chunks of planes, with in-place ops.

        Args:
            planes: float32 ``(n, H, W)``.
            acc: float32 ``(n, H // cell, W // cell, 2 * nbins + 1)``, contiguous; accumulated into.
            col_offset: float32 ``(W,)``, ``(w // cell) * (2 * nbins + 1) + nbins``.
            weight: Tiled Gaussian window ``(H, W)`` or None.
        """
        n, H, W = planes.shape
        cs, nb = self.cell_size, self.nbins
        xp = F.pad(planes, (1, 1, 1, 1), mode="reflect")  # (n, H + 2, W + 2)

        # Sobel as separable passes, differences first: gx = [1, 2, 1]^T smoothing of the [1, 0, -1] column
        # difference, gy = [1, 2, 1] smoothing of the [1, 0, -1] row difference. This is cross-correlation with
        # kx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]] and ky = kx.T, exactly as conv2d's (same values up to float32
        # rounding), but cheaper (6 elementwise ops) and more accurate: the difference of two close pixels is
        # exact, so a flat region gets exactly zero gradient (conv2d's tap-by-tap sum leaves rounding noise
        # there, which normalisation then blows up to unit histograms).
        dx = xp[:, :, :-2] - xp[:, :, 2:]  # (n, H + 2, W)
        gx = dx[:, :-2] + dx[:, 2:]
        gx.add_(dx[:, 1:-1], alpha=2)
        dy = xp[:, :-2] - xp[:, 2:]  # (n, H, W + 2)
        gy = dy[:, :, :-2] + dy[:, :, 2:]
        gy.add_(dy[:, :, 1:-1], alpha=2)
        del xp, dx, dy

        mag = gx * gx
        mag.addcmul_(gy, gy).sqrt_()
        if weight is not None:
            mag.mul_(weight)

        # The bin formula of step 4, op for op; in place in gx's storage.
        f = gx.atan2_(gy).div_(math.pi).mul_(nb).floor_()
        f.nan_to_num_(nan=0.0)  # non-finite input: keep the scatter index in range (the NaN magnitude shows)
        # Exact (small integers in float32). float -> int32 -> int64 is ~2x faster than float -> int64 on CPU.
        idx = f.add_(col_offset).to(torch.int32).to(torch.int64)

        rows = n * (H // cs)
        acc.view(rows, -1).scatter_add_(1, idx.view(rows, cs * W), mag.view(rows, cs * W))

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"HOG expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"HOG expects a 4-D tensor (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"HOG expects a floating-point tensor, got {x.dtype} (convert it with .float())")
        H, W = x.shape[-2:]
        cs = self.cell_size
        if H % cs or W % cs or H == 0 or W == 0:
            raise ValueError(f"HOG: H and W must be positive multiples of cell_size={cs}, got H={H}, W={W}")
        if H < 2 or W < 2:
            raise ValueError(f"HOG: reflect padding needs H >= 2 and W >= 2, got H={H}, W={W}")
        g = self.gaussian_window
        if g and (H % g or W % g):
            raise ValueError(f"HOG: H and W must be multiples of gaussian_window={g} to tile it, got H={H}, W={W}")


@functools.lru_cache(maxsize=16)
def _cached_hog(nbins: int, cell_size: int, gaussian_window: int, device: torch.device) -> HOG:
    return HOG(nbins, cell_size, gaussian_window).to(device)


def hog_patch_targets(
    x: Tensor,
    patch_size: int = 16,
    nbins: int = 9,
    cell_size: int = 8,
    gaussian_window: int = 0,
    temporal_patch: int = 2,
    frame_index: int = 0,
    hog: HOG | None = None,
) -> Tensor:
    """MaskFeat regression targets: the HOG histograms of each patch, flattened in the official order.

    Inside a patch the feature index is ``((c * nbins + b) * k + i) * k + j`` with ``k = patch_size // cell_size``
    and ``(i, j)`` the cell's row and column inside the patch (the official ordering).

    Args:
        x: Images ``(B, C, H, W)`` or videos ``(B, C, T, H, W)``; H and W multiples of ``patch_size``.
        patch_size: Side of a (spatial) patch in pixels, a multiple of ``cell_size``.
        nbins: Orientation bins.
        cell_size: Side of a histogram cell in pixels.
        gaussian_window: Gaussian weighting window (0 = off).
        temporal_patch: Video only: frames per temporal patch; T must be divisible by it.
        frame_index: Video only: which frame of each temporal patch is used, ``0 <= frame_index < temporal_patch``
            (0 = first frame, as the official code; ``temporal_patch // 2`` = centre frame).
        hog: Optional :class:`HOG` to use (its settings must match ``nbins``, ``cell_size``, ``gaussian_window``).
            By default a cached instance per setting and device is used, so calling this in a training loop
            builds nothing.

    Returns:
        float32 ``(B, N, C * nbins * k * k)``: images ``N = (H // p) * (W // p)`` in row-major patch order;
        videos ``N = (T // temporal_patch) * (H // p) * (W // p)`` ordered ``(t, h, w)``.
    """
    if hog is None:
        hog = _cached_hog(nbins, cell_size, gaussian_window, x.device)
    elif (hog.nbins, hog.cell_size, hog.gaussian_window) != (nbins, cell_size, gaussian_window):
        raise ValueError(
            f"hog_patch_targets: the given HOG has nbins={hog.nbins}, cell_size={hog.cell_size}, "
            f"gaussian_window={hog.gaussian_window} but nbins={nbins}, cell_size={cell_size}, "
            f"gaussian_window={gaussian_window} were asked for"
        )
    if patch_size < 1 or patch_size % cell_size:
        raise ValueError(f"patch_size={patch_size} must be a positive multiple of cell_size={cell_size}")

    if x.ndim == 5:
        B, C, T = x.shape[:3]
        if temporal_patch < 1 or T % temporal_patch:
            raise ValueError(f"video length T={T} must be divisible by temporal_patch={temporal_patch}")
        if not 0 <= frame_index < temporal_patch:
            raise ValueError(f"frame_index={frame_index} must be in [0, temporal_patch={temporal_patch})")
        frames = x[:, :, frame_index::temporal_patch].transpose(1, 2)  # (B, T', C, H, W)
        t = frames.shape[1]
        frames = frames.reshape(B * t, C, *x.shape[-2:])
        targets = hog_patch_targets(frames, patch_size, nbins, cell_size, gaussian_window, hog=hog)
        return targets.reshape(B, t * targets.shape[1], targets.shape[2])
    if x.ndim != 4:
        raise ValueError(f"hog_patch_targets expects (B, C, H, W) or (B, C, T, H, W), got shape {tuple(x.shape)}")

    B, C, H, W = x.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"H={H} and W={W} must be multiples of patch_size={patch_size}")
    k = patch_size // cell_size
    hp, wp = H // patch_size, W // patch_size
    cells = hog.cell_histograms(x)  # (B, C, Hc, Wc, nbins)
    cells = cells.view(B, C, hp, k, wp, k, hog.nbins)
    # -> (B, hp, wp, C, nbins, i, j): the official feature order inside a patch.
    return cells.permute(0, 2, 4, 1, 6, 3, 5).reshape(B, hp * wp, C * hog.nbins * k * k)
