"""``maskfeat visualize``: what the pre-trained model predicts.

One PNG per image, four panels: the input, the masked input (masked patches grey), the HOG target drawn as
oriented-gradient glyphs, and the HOG the model predicts at the masked patches.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from maskfeat import builder
from maskfeat import checkpoint as ckpt_io
from maskfeat.config import ConfigError
from maskfeat.data import denormalize
from maskfeat.loading import saved_pretrain_model
from maskfeat.masking import get_mask_function
from maskfeat.models.maskfeat import masked_mse, mean_target_mse, target_patch_size
from maskfeat.tracking import baseline_note
from maskfeat.weight_files import model_file

log = logging.getLogger("maskfeat")

PANEL = 224  # minimum side of a panel, pixels


def hog_glyphs(hist: np.ndarray, cell_px: int) -> Image.Image:
    """Draw cell histograms as HOG glyphs: in each cell, one line per orientation bin along the edge direction
    (perpendicular to the gradient), brightness proportional to the bin's value.

    Args:
        hist: (nbins, h, w) non-negative histogram values (already scaled to [0, 1]).
        cell_px: side of a cell in the drawing, pixels.
    Returns:
        A grey-scale image of size (w * cell_px, h * cell_px).
    """
    nbins, h, w = hist.shape
    img = Image.new("L", (w * cell_px, h * cell_px), 0)
    draw = ImageDraw.Draw(img)
    r = cell_px * 0.45
    for b in range(nbins):
        # Bin b holds gradient phases p = atan2(gx, gy) in [b, b+1) * pi / nbins; the gradient points along
        # (x, y) = (sin p, cos p), so the edge runs along (cos p, -sin p).
        p = (b + 0.5) * math.pi / nbins
        dx, dy = r * math.cos(p), -r * math.sin(p)
        for i in range(h):
            for j in range(w):
                v = float(hist[b, i, j])
                if v <= 0.02:
                    continue
                cx, cy = (j + 0.5) * cell_px, (i + 0.5) * cell_px
                draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=int(255 * min(v, 1.0)), width=1)
    return img


def patches_to_hog(vectors: torch.Tensor, grid: tuple[int, int], chans: int, nbins: int, k: int) -> np.ndarray:
    """Invert the per-patch HOG layout: (N, C*nbins*k*k) -> (nbins, gh*k, gw*k), averaged over colour channels."""
    gh, gw = grid
    x = vectors.float().reshape(gh, gw, chans, nbins, k, k).mean(2)  # (gh, gw, nbins, k, k)
    return x.permute(2, 0, 3, 1, 4).reshape(nbins, gh * k, gw * k).numpy()


def _dominant(hist: np.ndarray) -> np.ndarray:
    """(nbins, h, w) histograms minus each cell's smallest bin."""
    return hist - hist.min(axis=0, keepdims=True)


def _label(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + 16), (255, 255, 255))
    out.paste(img.convert("RGB"), (0, 16))
    ImageDraw.Draw(out).text((4, 2), text, fill=(0, 0, 0))
    return out


def render_panels(
    image: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, patch: int, cell: int, nbins: int
) -> Image.Image:
    """The four-panel picture for one image.

    Args:
        image: (3, H, W) normalised image. mask: (gh, gw) bool. target, pred: (N, D) per-patch HOG vectors.
    """
    _, height, width = image.shape
    grid = (height // patch, width // patch)
    k = patch // cell
    scale = max(1, math.ceil(PANEL / max(height, width)))
    size = (width * scale, height * scale)
    rgb = (denormalize(image).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    masked = rgb.copy()
    pixel_mask = mask.repeat_interleave(patch, 0).repeat_interleave(patch, 1).numpy()
    masked[pixel_mask] = 128
    cell_mask = mask.repeat_interleave(k, 0).repeat_interleave(k, 1).numpy()
    # Both panels drawn alike: each cell's histogram above its smallest bin (its dominant orientations), each panel
    # stretched to its own maximum. An MSE regressor under uncertainty predicts histograms shrunk towards the
    # average one; the stretch shows which orientations it favours.
    t = _dominant(patches_to_hog(target, grid, 3, nbins, k))
    p = _dominant(patches_to_hog(pred, grid, 3, nbins, k)) * cell_mask[None]  # only where it could not see
    cell_px = cell * scale
    panels = [
        _label(Image.fromarray(rgb).resize(size, Image.NEAREST), "input"),
        _label(Image.fromarray(masked).resize(size, Image.NEAREST), f"masked {mask.float().mean():.0%}"),
        _label(hog_glyphs(t / max(t.max(), 1e-6), cell_px), "HOG target"),
        _label(hog_glyphs(p / max(p.max(), 1e-6), cell_px), "predicted HOG (masked)"),
    ]
    out = Image.new("RGB", (sum(pn.width for pn in panels) + 4 * (len(panels) - 1), panels[0].height), "white")
    x = 0
    for pn in panels:
        out.paste(pn, (x, 0))
        x += pn.width + 4
    return out


def _pretrained_model(cfg: DictConfig) -> tuple[torch.nn.Module, DictConfig, str]:
    """The pre-training model of ``model.checkpoint`` (default: the run's checkpoint-last.pt), in eval mode, with
    the config it was trained with and the checkpoint's path."""
    path = cfg.model.checkpoint or os.path.join(cfg.output_dir, ckpt_io.LAST)
    if not os.path.exists(path):
        raise ConfigError(f"no checkpoint to visualize: {path} does not exist (set model.checkpoint=...)")
    path = model_file(path)
    if path.endswith(".safetensors"):
        raise ConfigError(
            f"visualize needs a pre-training checkpoint (checkpoint-*.pt of maskfeat pretrain); {path} is not one"
        )
    state = ckpt_io.load_checkpoint(path, cfg.model.allow_pickle)
    if "classifier" in state or "config" not in state:
        what = f"a {state['classifier']} checkpoint" if "classifier" in state else "not a maskfeat checkpoint"
        raise ConfigError(f"visualize needs a pre-training checkpoint (from maskfeat pretrain); {path} is {what}")
    model, run_cfg = saved_pretrain_model(state["config"])
    builder.check_drawable(run_cfg, path)
    if run_cfg.target.name != "hog":
        raise ConfigError(f"visualize draws HOG targets; {path} was trained with target.name={run_cfg.target.name}")
    model.load_state_dict(state["model"])
    return model.eval(), run_cfg, path


def run_visualize(cfg: DictConfig) -> list[str]:
    """Write ``output_dir/visualize/NNN.png`` for the first ``visualize.num_images`` images of ``data.path``."""
    model, run_cfg, _ = _pretrained_model(cfg)
    patch = target_patch_size(model.encoder)[-1]
    grid = tuple(model.output_grid[1:])  # (h, w): an image is a one-frame clip
    dataset = builder.view_dataset(run_cfg, builder.data_folder(cfg))
    mask_fn = get_mask_function(builder.image_mask_type(cfg))
    out_dir = os.path.join(cfg.output_dir, "visualize")
    os.makedirs(out_dir, exist_ok=True)
    drawn: list[tuple[str, float, torch.Tensor, torch.Tensor]] = []  # (file, loss, target, mask) per picture
    for i in range(len(dataset)):
        if len(drawn) == cfg.visualize.num_images:
            break
        item = dataset[i]
        if "image" not in item:  # unreadable: the dataset warned, take the next one
            continue
        mask = mask_fn(grid, cfg.mask.ratio, torch.Generator().manual_seed(cfg.seed + i))
        with torch.no_grad():
            loss, pred, target = model(item["image"][None], mask[None])
        picture = render_panels(
            item["image"], mask, target[0], pred[0], patch, run_cfg.target.cell_size, run_cfg.target.nbins
        )
        name = os.path.join(out_dir, f"{i:03d}.png")
        picture.save(name)
        drawn.append((name, loss.item(), target[0], mask.reshape(-1)))
    if drawn:
        _report_losses(drawn)
    log.info(f"wrote {len(drawn)} pictures to {out_dir} (input | masked input | HOG target | predicted HOG)")
    return [name for name, *_ in drawn]


def _report_losses(drawn: list[tuple[str, float, torch.Tensor, torch.Tensor]]) -> None:
    """Each picture's masked-HOG loss and all of them together, against the baseline as pre-training logs it, over
    the drawn images as one batch: every masked token predicted by the mean target of all their masked tokens."""
    names, losses, targets, masks = zip(*drawn)
    t, m = torch.stack(targets), torch.stack(masks)  # (n, N, D), (n, N)
    mean = t[m].mean(0)  # (D,)
    for name, loss, ti, mi in drawn:
        base = masked_mse(mean.expand_as(ti)[None], ti[None], mi[None]).item()
        log.info(f"{name}: masked-HOG loss {loss:.4f} ({baseline_note(loss, base)})")
    counts = m.sum(1).float()
    pooled = float((torch.tensor(losses) * counts).sum() / counts.sum().clamp(min=1.0))
    log.info(
        f"the {len(drawn)} images together: masked-HOG loss {pooled:.4f} "
        f"({baseline_note(pooled, mean_target_mse(t, m).item())})"
    )
