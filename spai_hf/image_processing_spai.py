"""Image -> tensor for SPAI, exactly as the original test-time pipeline (SPAI_SPEC.md section 1).

RGB conversion with PIL's ``.convert("RGB")`` (alpha dropped, no EXIF rotation), reflect-101 centred padding of
any side shorter than one patch, scaling to [0, 1] as ``uint8.float() * (1 / 255)``. Never resizes or crops and
does not normalise (the model normalises after splitting frequencies), so images keep their own sizes.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


class SpaiImageProcessor(BaseImageProcessor):
    r"""
    Prepares images of any size for [`SpaiForImageClassification`].

    Args:
        patch_size (`int`, defaults to 224):
            The model's patch side S; images with a side below S are padded up to S on that side.

    Returns a `BatchFeature` whose ``pixel_values`` is a (B, 3, H, W) tensor when all images share one size and
    ``return_tensors="pt"``, otherwise a list of (3, H, W) float32 tensors.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, patch_size: int = 224, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def preprocess(self, images, return_tensors: str | None = None, **kwargs) -> BatchFeature:
        """Convert one image or a list of images (PIL, uint8 numpy HxW[xC], or (3, H, W) tensors in [0, 1])."""
        if kwargs:
            raise TypeError(f"SpaiImageProcessor got unsupported arguments: {sorted(kwargs)}")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"SpaiImageProcessor returns torch tensors; return_tensors={return_tensors!r}")
        batch = images if isinstance(images, (list, tuple)) else [images]
        pixel_values = [self.to_tensor(image) for image in batch]
        same_size = len({tuple(p.shape) for p in pixel_values}) == 1
        if return_tensors == "pt" and same_size:
            return BatchFeature({"pixel_values": torch.stack(pixel_values)})
        return BatchFeature({"pixel_values": pixel_values})

    def to_tensor(self, image) -> torch.Tensor:
        """One image -> padded (3, H', W') float32 tensor in [0, 1]."""
        if isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"tensor images must be (3, H, W), got {tuple(image.shape)}")
            if image.dtype == torch.uint8:
                return self.to_tensor(image.permute(1, 2, 0).numpy())
            return self._pad(image.to(torch.float32))
        if isinstance(image, Image.Image):
            array = np.array(image.convert("RGB"))
        elif isinstance(image, np.ndarray) and image.dtype == np.uint8:
            array = image if image.ndim == 3 else image[..., None]
            if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
                raise ValueError(f"numpy images must be uint8 HxW or HxWx(1|3|4), got shape {image.shape}")
            array = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]
        else:
            raise TypeError(f"unsupported image type {type(image).__name__}; pass PIL images or uint8 arrays")
        array = self._pad_amounts_apply(np.ascontiguousarray(array))
        return torch.from_numpy(array).permute(2, 0, 1).float() * (1 / 255)

    def pad_amounts(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) centred padding that brings each side up to at least ``patch_size``."""
        pad_h, pad_w = max(0, self.patch_size - height), max(0, self.patch_size - width)
        return pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2

    def _pad_amounts_apply(self, array: np.ndarray) -> np.ndarray:
        top, bottom, left, right = self.pad_amounts(*array.shape[:2])
        if top + bottom + left + right == 0:
            return array
        # numpy "reflect" mirrors without repeating the edge pixel: OpenCV BORDER_REFLECT_101, as the original.
        return np.pad(array, ((top, bottom), (left, right), (0, 0)), mode="reflect")

    def _pad(self, image: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = self.pad_amounts(*image.shape[-2:])
        if top + bottom + left + right == 0:
            return image
        padded = np.pad(image.numpy(), ((0, 0), (top, bottom), (left, right)), mode="reflect")
        return torch.from_numpy(padded)


__all__ = ["SpaiImageProcessor"]
