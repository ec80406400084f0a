"""Patch -> spectral views: the original patch, its low-pass and its high-pass part (SPAI_SPEC.md section 3)."""

from __future__ import annotations

import torch
from torch import nn


def build_frequency_mask(size: int, radius: float) -> torch.Tensor:
    """The released low-pass mask: 1 inside the disk, 0 outside, as an (S, S) int64 tensor.

    The per-axis coordinate is S/2-1, ..., 1, 0, 0, 1, ..., S/2-1, so the disk is centred between bins S/2-1 and
    S/2, half a bin off the DC bin that fftshift puts at S/2. That offset is part of the released model.
    """
    half = size // 2
    index = torch.arange(size)
    coord = torch.where(index < half, half - 1 - index, index - half).to(torch.float32)
    distance = torch.sqrt(coord[None, :] ** 2 + coord[:, None] ** 2)
    return (distance < radius).to(torch.int64)


class SpaiSpectralFilter(nn.Module):
    """Split patches into three normalised views: original, low frequencies, high frequencies.

    Always computed in float32 / complex64 (also in bfloat16 mode): the views are clamped to [0, 1] before the
    backbone normalisation, and that clamp is sensitive to FFT precision.
    """

    def __init__(self, size: int, radius: float, mean: list[float], std: list[float]):
        super().__init__()
        self.size = size
        self.radius = radius
        self.image_mean = tuple(mean)
        self.image_std = tuple(std)
        self.register_buffer("frequency_mask", torch.empty(size, size), persistent=False)
        self.register_buffer("mean", torch.empty(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.empty(3, 1, 1), persistent=False)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """(Re)build the non-persistent buffers from the config values; they are not stored in checkpoints."""
        if self.frequency_mask.is_meta:
            return
        self.frequency_mask.copy_(build_frequency_mask(self.size, self.radius))
        self.mean.copy_(torch.tensor(self.image_mean).view(3, 1, 1))
        self.std.copy_(torch.tensor(self.image_std).view(3, 1, 1))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) patches in [0, 1] -> (3, n, 3, S, S): normalised original, low-pass, high-pass.

        ``ifftshift(fftshift(X) * M)`` equals ``X * ifftshift(M)`` exactly (the shifts only permute bins), so the
        mask is shifted instead of the spectrum.
        """
        patches = patches.to(torch.float32)
        spectrum = torch.fft.fft2(patches)
        low_pass = torch.fft.ifftshift(self.frequency_mask.float(), dim=(-2, -1))
        views = torch.empty((3, *patches.shape), dtype=torch.float32, device=patches.device)
        views[0] = patches
        torch.clamp(torch.fft.ifft2(spectrum * low_pass).real, 0, 1, out=views[1])
        torch.clamp(torch.fft.ifft2(spectrum * (1 - low_pass)).real, 0, 1, out=views[2])
        return views.sub_(self.mean.float()).div_(self.std.float())
