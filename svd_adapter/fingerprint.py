"""Cheap fingerprint of the base weights an adapter was made on.

An SVD residual adapter is only meaningful on the weights it was decomposed from: its frozen principal part is the
base weight minus the initial residual. The fingerprint records, per target module, the weight shape and a strided
sample of its values (a few dozen numbers, not a hash of every byte), so loading costs microseconds per module.
"""

from __future__ import annotations

from typing import Optional

import torch

NUM_SAMPLES = 16


def sample_positions(shape: tuple[int, int], num: int = NUM_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of ``num`` entries spread evenly over the flattened weight."""
    rows, cols = shape
    flat = torch.linspace(0, rows * cols - 1, num).round().long()
    return flat // cols, flat % cols


def record(shape: tuple[int, int], values: torch.Tensor) -> dict:
    """JSON-serialisable fingerprint of one module."""
    return {"shape": list(shape), "sample": [float(v) for v in values.detach().float().cpu()]}


def mismatch(
    module_name: str, recorded: dict, shape: tuple[int, int], values: torch.Tensor, dtype: torch.dtype
) -> Optional[str]:
    """Describe how a module's current weight differs from its recorded fingerprint, or None if it matches.

    Values are compared with a tolerance of a few units in the last place of ``dtype`` (the current weight's), so a base
    loaded in half precision still matches the float32 base the adapter was made on, while any other weights do not.
    """
    if list(shape) != list(recorded["shape"]):
        return f"{module_name}: weight shape {tuple(shape)} but the adapter was made on {tuple(recorded['shape'])}"
    expected = torch.tensor(recorded["sample"], dtype=torch.float64)
    current = values.detach().double().cpu()
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    tol = 8 * eps * (expected.abs() + expected.abs().max()) + 1e-12
    bad = (current - expected).abs() > tol
    if bad.any():
        i = int(bad.nonzero()[0])
        return (
            f"{module_name}: sampled weight value {current[i].item():.6g} but the adapter was made on a base with "
            f"{expected[i].item():.6g} at the same position"
        )
    return None
