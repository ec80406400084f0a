"""Per-layer backbone tokens -> one C-vector per patch (SPAI_SPEC.md section 5).

For each used layer, a projector maps the tokens of the three spectral views; how well the original view's
projection agrees with the low-/high-frequency ones (cosine similarity statistics) and the statistics of the
original view's projection (original-image branch) make the patch vector [6N similarity stats, P branch].
"""

from __future__ import annotations

import torch
from torch import nn


class SpaiProjector(nn.Module):
    """[LayerNorm ->] Dropout -> Linear -> GELU -> Dropout -> Linear [-> GELU -> Dropout] -> LayerNorm.

    The per-layer projectors have the input LayerNorm and no final activation; the two blocks of the
    original-image branch have no input LayerNorm and end with a GELU.
    """

    def __init__(
        self, in_dim: int, out_dim: int, *, input_norm: bool, final_activation: bool, eps: float, dropout: float
    ):
        super().__init__()
        self.norm_in = nn.LayerNorm(in_dim, eps=eps) if input_norm else nn.Identity()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.final_activation = final_activation
        self.norm_out = nn.LayerNorm(out_dim, eps=eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(self.dropout(self.norm_in(hidden)))
        hidden = self.fc2(self.dropout(self.activation(hidden)))
        if self.final_activation:
            hidden = self.dropout(self.activation(hidden))
        return self.norm_out(hidden)


def mean_and_std(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased (L - 1) std over the token axis 1 of (M, L, ...) tensors."""
    return tokens.mean(dim=1), tokens.std(dim=1)


class SpaiOriginalImageBranch(nn.Module):
    """Per-layer (mean, std) of the original view's projected tokens -> P-vector.

    proj1 per layer, then a weighted sum over layers with softmax(alpha) over the layer axis per feature, then
    proj2.
    """

    def __init__(self, num_layers: int, dim: int, eps: float, dropout: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, num_layers, dim))
        self.proj1 = SpaiProjector(2 * dim, dim, input_norm=False, final_activation=True, eps=eps, dropout=dropout)
        self.proj2 = SpaiProjector(dim, dim, input_norm=False, final_activation=True, eps=eps, dropout=dropout)

    def forward(self, layer_stats: torch.Tensor) -> torch.Tensor:
        """(M, N, 2P) per-layer [mean, std] -> (M, P)."""
        per_layer = self.proj1(layer_stats)
        mixed = (per_layer * torch.softmax(self.alpha, dim=1)).sum(dim=1)
        return self.proj2(mixed)


class SpaiFrequencyRestorationEstimator(nn.Module):
    """Turns each used layer's tokens of the three views of M patches into the M patch vectors (M, C)."""

    def __init__(self, num_layers: int, hidden_size: int, projection_dim: int, eps: float, dropout: float):
        super().__init__()
        self.projectors = nn.ModuleList(
            SpaiProjector(
                hidden_size, projection_dim, input_norm=True, final_activation=False, eps=eps, dropout=dropout
            )
            for _ in range(num_layers)
        )
        self.original_branch = SpaiOriginalImageBranch(num_layers, projection_dim, eps, dropout)

    def project(self, position: int, tokens: torch.Tensor) -> torch.Tensor:
        """Apply the projector of used layer ``position`` to (rows, L, D) tokens -> (rows, L, P)."""
        return self.projectors[position](tokens)

    @staticmethod
    def layer_statistics(projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, M, L, P) projected [original, low, high] views of one layer -> (M, 6) similarity stats, (M, 2P) branch input.

        Similarity stats: mean and unbiased std over tokens of cos(o, l), cos(o, h), cos(l, h), in that order.
        Always float32, also when the projectors ran in bfloat16.
        """
        projected = projected.float()
        original, low, high = projected.unbind(0)
        norms = torch.linalg.vector_norm(projected, dim=-1)  # each view's norms once, not once per pair
        similarity_stats = []
        for (a, b), first, second in (((0, 1), original, low), ((0, 2), original, high), ((1, 2), low, high)):
            # cosine similarity as torch defines it: x.y / max(|x| |y|, eps), eps = 1e-8
            cosine = torch.linalg.vecdot(first, second) / (norms[a] * norms[b]).clamp_min(1e-8)
            similarity_stats.extend(mean_and_std(cosine))
        return torch.stack(similarity_stats, dim=-1), torch.cat(mean_and_std(original), dim=-1)

    def combine(self, similarity_stats: torch.Tensor, branch_input: torch.Tensor) -> torch.Tensor:
        """(M, N, 6) similarity stats and (M, N, 2P) branch input -> (M, C) patch vectors.

        The 6N part is laid out statistic-major: [mean cos(o,l) per layer, std cos(o,l) per layer, ...].
        """
        similarity = similarity_stats.transpose(1, 2).flatten(1)
        return torch.cat([similarity, self.original_branch(branch_input)], dim=-1)
