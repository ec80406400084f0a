"""The SVD residual tuner layer: a wrapped ``nn.Linear`` whose smallest singular triplets are trainable.

For a base weight ``W`` with SVD ``U diag(S) V^T``, an adapter holds the trainable residual factors ``(U_res, S_res,
V_res)`` and, frozen, the initial residual factors ``(U0, S0, V0)`` they were taken from. The adapted weight is

    W_adapted = (W - U0 diag(S0) V0^T) + U_res diag(S_res) V_res^T = W + L R^T,
    L = [U_res diag(S_res) | -U0 diag(S0)],  R = [V_res | V0]   (rank <= 2k).

The base weight is never modified unless merged, so the forward adds the rank-2k correction ``x R L^T`` to the base
output (one thin GEMM, then one fused GEMM-accumulate) and the residual matrix is never materialised. A saved
adapter holds both factor sets, so loading it needs no SVD. The layer knows nothing of the model; the tuner model
(``model.py``) decides when to decompose and how to route rows.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

BASE_ADAPTER_NAME = "__base__"


def _factor_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """Factors live in at least float32, so half-precision bases are decomposed and trained in float32."""
    return torch.promote_types(weight_dtype, torch.float32)


class SVDResidualLayer(BaseTunerLayer):
    """Adapter state and maths shared by the SVD residual layers."""

    adapter_layer_names = ("svd_U", "svd_S", "svd_V")
    other_param_names = ("svd_U0", "svd_S0", "svd_V0")

    def __init__(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        self.svd_U = nn.ParameterDict()
        self.svd_S = nn.ParameterDict()
        self.svd_V = nn.ParameterDict()
        self.svd_U0 = BufferDict(persistent=True)
        self.svd_S0 = BufferDict(persistent=True)
        self.svd_V0 = BufferDict(persistent=True)
        # adapters whose factors were neither decomposed nor loaded yet
        self._svd_pending: set[str] = set()
        self._disable_adapters = False
        self.merged_adapters = []
        self.out_features, self.in_features = base_layer.weight.shape

    def update_layer(self, adapter_name: str, residual_rank: int) -> None:
        """Allocate (uninitialised) factors of a new adapter; they are filled by an SVD or by loading a file."""
        weight = self.get_base_layer().weight
        like = {"device": weight.device, "dtype": _factor_dtype(weight.dtype)}
        k = residual_rank
        self.svd_U[adapter_name] = nn.Parameter(torch.zeros(self.out_features, k, **like))
        self.svd_S[adapter_name] = nn.Parameter(torch.zeros(k, **like))
        self.svd_V[adapter_name] = nn.Parameter(torch.zeros(self.in_features, k, **like))
        self.svd_U0[adapter_name] = torch.zeros(self.out_features, k, **like)
        self.svd_S0[adapter_name] = torch.zeros(k, **like)
        self.svd_V0[adapter_name] = torch.zeros(self.in_features, k, **like)
        self._svd_pending.add(adapter_name)
        self.set_adapter(self.active_adapters)

    # ------------------------------------------------------------------ initialisation
    def initialise_from_svd(self, adapter_name: str) -> None:
        """Decompose the (unmerged) base weight once and set both factor sets to its smallest ``k`` triplets."""
        k = self.svd_S[adapter_name].shape[0]
        weight = self.unmerged_base_weight(dtype=self.svd_U[adapter_name].dtype)
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        with torch.no_grad():
            for store, value in [
                (self.svd_U, u[:, -k:]),
                (self.svd_S, s[-k:]),
                (self.svd_V, vh[-k:].T),
                (self.svd_U0, u[:, -k:]),
                (self.svd_S0, s[-k:]),
                (self.svd_V0, vh[-k:].T),
            ]:
                store[adapter_name].copy_(value)
        self._svd_pending.discard(adapter_name)

    def ensure_initialised(self, adapter_name: str) -> None:
        """Run the SVD for an adapter that was created but never loaded from a file."""
        if adapter_name in self._svd_pending:
            self.initialise_from_svd(adapter_name)

    def mark_loaded(self, state_dict: dict, prefix: str) -> None:
        """Adapters whose factors are in a state dict being loaded need no SVD."""
        for name in list(self._svd_pending):
            if f"{prefix}svd_U.{name}" in state_dict:
                self._svd_pending.discard(name)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._svd_pending.discard(adapter_name)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        """Move to the base layer's device but keep the float32 factor dtype (PEFT's default would cast to the base)."""
        device = device if device is not None else self.get_base_layer().weight.device
        for name in self.adapter_layer_names + self.other_param_names:
            store = getattr(self, name)
            if adapter_name in store and store[adapter_name].device != torch.device("meta"):
                store[adapter_name] = store[adapter_name].to(device)

    # ------------------------------------------------------------------ weights
    def delta_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, R)`` with ``W_adapted - W = L @ R.T``; shapes ``(out, 2k)`` and ``(in, 2k)``."""
        self.ensure_initialised(adapter_name)
        u, s, v = self.svd_U[adapter_name], self.svd_S[adapter_name], self.svd_V[adapter_name]
        u0, s0, v0 = self.svd_U0[adapter_name], self.svd_S0[adapter_name], self.svd_V0[adapter_name]
        return torch.cat([u * s, -(u0 * s0)], dim=1), torch.cat([v, v0], dim=1)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense weight change of one adapter (materialised only for merging)."""
        left, right = self.delta_factors(adapter_name)
        return left @ right.T

    def unmerged_base_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The base weight without any merged adapter, in ``dtype``."""
        weight = self.get_base_layer().weight.detach().to(dtype)
        for name in self.merged_adapters:
            weight = weight - self.get_delta_weight(name).detach().to(dtype)
        return weight

    def unmerged_weight_sample(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Base weight entries at ``(rows, cols)`` without merged adapters, in float64, cheap at any size."""
        weight = self.get_base_layer().weight.detach()
        rows, cols = rows.to(weight.device), cols.to(weight.device)
        values = weight[rows, cols].double()
        for name in self.merged_adapters:
            left, right = self.delta_factors(name)
            values = values - (left[rows].double() * right[cols].double()).sum(-1).detach()
        return values.cpu()

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Add the adapters' deltas to the base weight (computed in float32 or wider)."""
        base = self.get_base_layer()
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.svd_U:
                continue
            merged = base.weight.data.to(self.svd_U[name].dtype) + self.get_delta_weight(name).detach()
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs or infs detected in the merged weights; adapter {name!r} seems broken.")
            base.weight.data = merged.to(base.weight.dtype)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract merged deltas again, last merged first."""
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            restored = base.weight.data.to(self.svd_U[name].dtype) - self.get_delta_weight(name).detach()
            base.weight.data = restored.to(base.weight.dtype)

    # ------------------------------------------------------------------ regularisers
    def orthogonality_loss(self, adapter_name: str) -> torch.Tensor:
        """``||B^T B - I||_F^2`` for ``B = [principal | residual]`` on both sides, summed.

        The principal basis is never stored: ``I - M0 M0^T`` (M0 = the initial residual basis) stands for its
        projector, which is exact for a square weight and, on the longer side of a non-square one, also counts drift
        into the weight's null space (an upper bound of Effort's term).
        """
        self.ensure_initialised(adapter_name)
        total = 0.0
        for factor, initial in [
            (self.svd_U[adapter_name], self.svd_U0[adapter_name]),
            (self.svd_V[adapter_name], self.svd_V0[adapter_name]),
        ]:
            gram = factor.T @ factor
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            leak = factor - initial @ (initial.T @ factor)
            total = total + (gram - eye).pow(2).sum() + 2 * leak.pow(2).sum()
        return total

    def norm_loss(self, adapter_name: str) -> torch.Tensor:
        """``(||W_adapted||_F - ||W||_F)^2``, computed from the factors without forming ``W_adapted``."""
        left, right = self.delta_factors(adapter_name)
        weight = self.unmerged_base_weight(dtype=left.dtype)
        base_sq = weight.pow(2).sum()
        cross = (left * (weight @ right)).sum()
        delta_sq = ((left.T @ left) * (right.T @ right)).sum()
        adapted_norm = (base_sq + 2 * cross + delta_sq).clamp_min(0).sqrt()
        return (adapted_norm - base_sq.sqrt()).pow(2)


class Linear(nn.Module, SVDResidualLayer):
    """SVD residual adapter around an ``nn.Linear``."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, residual_rank: int) -> None:
        super().__init__()
        SVDResidualLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, residual_rank)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.mark_loaded(state_dict, prefix)

    def _add_correction(self, result: torch.Tensor, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """``result + x R L^T``; in place with one fused GEMM when dtypes allow (the cheapest pass over ``result``)."""
        left, right = self.delta_factors(adapter_name)
        hidden = F.linear(x.to(left.dtype), right.T)
        if result.dtype == left.dtype and result.is_contiguous():
            result.view(-1, result.shape[-1]).addmm_(hidden.reshape(-1, hidden.shape[-1]), left.T)
            return result
        return result + F.linear(hidden, left).to(result.dtype)

    def forward(self, x: torch.Tensor, *args: Any, adapter_names: Optional[list[str]] = None, **kwargs: Any):
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, result, adapter_names)
        for name in self.active_adapters:
            if name in self.svd_U and name not in self.merged_adapters:
                result = self._add_correction(result, x, name)
        return result

    def _mixed_batch_forward(self, x: torch.Tensor, result: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
        """Each row ``i`` of ``x`` gets the correction of adapter ``adapter_names[i]`` (none for ``"__base__"``)."""
        if len(adapter_names) != x.shape[0]:
            raise ValueError(f"adapter_names has {len(adapter_names)} entries but the input has {x.shape[0]} rows.")
        for name in sorted(set(adapter_names) - {BASE_ADAPTER_NAME}):
            if name not in self.svd_U:
                continue
            rows = torch.tensor([i for i, n in enumerate(adapter_names) if n == name], device=x.device)
            result.index_copy_(0, rows, self._add_correction(result[rows], x[rows], name))
        return result

    def __repr__(self) -> str:
        return "svd_residual." + super().__repr__()
