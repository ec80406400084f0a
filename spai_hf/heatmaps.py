"""Spectral-context attention heatmaps: which patches SPAI's patch attention looked at for an image's verdict.

SPAI pools its per-patch features with one learned query; the softmax weight of each patch (averaged over heads)
says how much that patch contributed. `attention_mask` paints those weights back onto the image's pixels and
`save_heatmap` writes two PNGs: a 16-bit grey mask (weights scaled so the heaviest patch is white) and a colour
overlay on the image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from .atomic import atomic_open

__all__ = ["attention_mask", "overlay", "save_heatmap"]

OVERLAY_ALPHA = 0.55
COLORMAP = "inferno"


def attention_mask(
    size: tuple[int, int], boxes: Sequence[Sequence[int]] | np.ndarray, weights: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Per-pixel attention for an image of ``size`` = (height, width), as float32 (height, width).

    ``boxes`` are (top, left, size) square patches in image pixels, as the model reports them (clipped to the
    image, so boxes of a padded small image may start at negative offsets); a pixel
    covered by several patches (the five-crop fallback for small images) gets their mean weight, and a pixel no
    patch covers (the strip past the last full patch) gets 0.
    """
    height, width = size
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 3)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(boxes) != len(weights):
        raise ValueError(f"got {len(boxes)} patch boxes but {len(weights)} attention weights")
    total = np.zeros((height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.int64)
    for (top, left, side), weight in zip(boxes, weights):
        bottom, right = min(int(top + side), height), min(int(left + side), width)
        top, left = max(int(top), 0), max(int(left), 0)
        if top < bottom and left < right:
            total[top:bottom, left:right] += weight
            count[top:bottom, left:right] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0).astype(np.float32)


def _normalised(mask: np.ndarray) -> np.ndarray:
    peak = float(mask.max()) if mask.size else 0.0
    return mask / peak if peak > 0 else np.zeros_like(mask)


def overlay(image: Image.Image, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """Blend a colour-mapped ``mask`` (same height/width as ``image``) over ``image``; uncovered pixels stay as is."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image size {rgb.shape[:2]}")
    heat = colormaps[COLORMAP](_normalised(mask))[..., :3].astype(np.float32)
    blend = np.where(mask[..., None] > 0, alpha, 0.0).astype(np.float32)
    out = (1.0 - blend) * rgb + blend * heat
    return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8))


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")


def save_heatmap(
    image: Image.Image,
    boxes: Sequence[Sequence[int]] | np.ndarray,
    weights: Sequence[float] | np.ndarray,
    stem: str | os.PathLike,
) -> tuple[Path, Path]:
    """Write ``<stem>.overlay.png`` and ``<stem>.mask.png`` (16-bit grey) atomically; returns their paths."""
    mask = attention_mask((image.height, image.width), boxes, weights)
    stem = Path(stem)
    overlay_path = stem.with_name(stem.name + ".overlay.png")
    mask_path = stem.with_name(stem.name + ".mask.png")
    grey = np.rint(_normalised(mask) * 65535.0).astype(np.uint16)
    _save_png(Image.fromarray(grey), mask_path)
    _save_png(overlay(image, mask), overlay_path)
    return overlay_path, mask_path
