"""Patch vectors of one image -> one image vector (SPAI_SPEC.md section 6)."""

from __future__ import annotations

import torch
from torch import nn


class SpaiSpectralContextAttention(nn.Module):
    """Attention pooling over an image's patches with one learned query per head, then Linear + LayerNorm.

    Works on a padded batch (samples, max patches, C) with a validity mask, so its Linears see one row per
    sample on the leading axis.
    """

    def __init__(self, feature_dim: int, hidden_size: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))
        self.to_kv = nn.Linear(feature_dim, 2 * hidden_size, bias=False)
        self.to_out = nn.Linear(hidden_size, feature_dim, bias=False)
        self.norm = nn.LayerNorm(feature_dim, eps=eps)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, L, C), mask (B, L) True for real patches -> pooled (B, C), weights (B, heads, L)."""
        batch, length, _ = features.shape
        keys, values = self.to_kv(features).view(batch, length, 2, self.num_heads, self.head_dim).unbind(2)
        scores = torch.einsum("hqd,blhd->bhql", self.query, keys).squeeze(2) * self.head_dim**-0.5
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        pooled = torch.einsum("bhl,blhd->bhd", weights, values).reshape(batch, -1)
        return self.norm(self.to_out(pooled)), weights
