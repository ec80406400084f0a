"""Image -> patches: where SPAI looks in an image of any size (SPAI_SPEC.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PatchLayout:
    """The patches of one image.

    ``boxes`` lists every patch as (top, left) in the order the patch attention sees them. ``unique_boxes`` holds
    each distinct position once and ``unique_index[i]`` says which of them patch ``i`` is, so identical crops
    (the five crops of an S x S image) go through the network once.
    """

    boxes: tuple[tuple[int, int], ...]
    unique_boxes: tuple[tuple[int, int], ...]
    unique_index: tuple[int, ...]
    size: int
    five_crop: bool

    @property
    def num_patches(self) -> int:
        return len(self.boxes)


def patch_boxes(height: int, width: int, size: int, stride: int, minimum_patches: int) -> tuple[list, bool]:
    """Top-left corners of the S x S patches of an H x W image, and whether the five-crop fallback was used.

    Grid: stride ``stride``, row by row; pixels past the last full patch are dropped. Fewer than
    ``minimum_patches`` grid patches -> five crops: top-left, top-right, bottom-left, bottom-right, centre, the
    centre at Python ``round`` (half to even) of the remaining margin halves.
    """
    if height < size or width < size:
        raise ValueError(
            f"image of {height}x{width} is smaller than the {size}x{size} patch; "
            "pad it first (SpaiImageProcessor pads with reflect-101)"
        )
    rows = (height - size) // stride + 1
    cols = (width - size) // stride + 1
    if rows * cols >= minimum_patches:
        return [(r * stride, c * stride) for r in range(rows) for c in range(cols)], False
    bottom, right = height - size, width - size
    centre = (round(bottom / 2), round(right / 2))
    return [(0, 0), (0, right), (bottom, 0), (bottom, right), centre], True


def layout_patches(height: int, width: int, size: int, stride: int, minimum_patches: int) -> PatchLayout:
    """Patch positions of one image with duplicates merged (see `PatchLayout`)."""
    boxes, five_crop = patch_boxes(height, width, size, stride, minimum_patches)
    first_seen: dict[tuple[int, int], int] = {}
    index = [first_seen.setdefault(box, len(first_seen)) for box in boxes]
    return PatchLayout(tuple(boxes), tuple(first_seen), tuple(index), size, five_crop)


def crop_patch(image: torch.Tensor, box: tuple[int, int], size: int) -> torch.Tensor:
    """The (3, S, S) view of a (3, H, W) image at top-left corner ``box`` (no copy)."""
    top, left = box
    return image[:, top : top + size, left : left + size]


def crop_patches(image: torch.Tensor, boxes: list[tuple[int, int]], size: int) -> torch.Tensor:
    """Stack the S x S crops of a (3, H, W) image at the given top-left corners -> (n, 3, S, S)."""
    return torch.stack([crop_patch(image, box, size) for box in boxes])


def boxes_tensor(layout: PatchLayout) -> torch.Tensor:
    """(num_patches, 3) long tensor of (top, left, size) for drawing attention heatmaps."""
    return torch.tensor([(top, left, layout.size) for top, left in layout.boxes], dtype=torch.long)
