"""Frozen-principal / trainable-residual SVD adapters (Effort, ICML 2025) as a native PEFT method.

Importing this package registers the method with PEFT, so ``get_peft_model(model, SVDResidualConfig())``,
``PeftModel.from_pretrained``, ``load_adapter`` and the rest of the stock API work with it.
"""

from .config import DEFAULT_TARGET_MODULES, SVDPeftType, SVDResidualConfig
from .layer import Linear, SVDResidualLayer
from .model import BaseFingerprintMismatchError, SVDResidualModel
from .registration import register

register()

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "BaseFingerprintMismatchError",
    "Linear",
    "SVDPeftType",
    "SVDResidualConfig",
    "SVDResidualLayer",
    "SVDResidualModel",
    "register",
]
