"""Image vector -> logit of P(AI-generated) (SPAI_SPEC.md section 7)."""

from __future__ import annotations

import torch
from torch import nn


class SpaiClassificationHead(nn.Module):
    """Linear(C, rC) -> ReLU -> Dropout -> Linear(rC, rC) -> ReLU -> Dropout -> Linear(rC, 1)."""

    def __init__(self, feature_dim: int, mlp_ratio: int, dropout: float):
        super().__init__()
        hidden = feature_dim * mlp_ratio
        self.fc1 = nn.Linear(feature_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, 1)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.activation(self.fc1(hidden)))
        hidden = self.dropout(self.activation(self.fc2(hidden)))
        return self.out_proj(hidden)
