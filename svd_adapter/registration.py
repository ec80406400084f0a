"""Registration of the SVD residual method with PEFT.

PEFT 0.21's ``register_peft_method`` only accepts names already in its ``PeftType`` enum, so this fills the same
mappings it fills (type -> config, type -> tuner, type -> prefix). ``tests/test_svd_adapter_registration.py`` checks
that these are still the mappings PEFT dispatches on, and fails loudly if a PEFT release changes them.
"""

from __future__ import annotations

from peft import mapping

from .config import SVDPeftType, SVDResidualConfig
from .model import SVDResidualModel


def register() -> None:
    """Make ``SVDResidualConfig`` usable with ``get_peft_model``, ``PeftModel.from_pretrained`` and friends.

    Idempotent; refuses to overwrite another method registered under the same type or prefix.
    """
    peft_type = SVDPeftType.SVD_RESIDUAL
    entries = [
        (mapping.PEFT_TYPE_TO_CONFIG_MAPPING, SVDResidualConfig),
        (mapping.PEFT_TYPE_TO_TUNER_MAPPING, SVDResidualModel),
        (mapping.PEFT_TYPE_TO_PREFIX_MAPPING, SVDResidualModel.prefix),
    ]
    for table, value in entries:
        if table.get(peft_type, value) != value:
            raise RuntimeError(f"PEFT already has a different method registered as {peft_type.value}.")
    for other_type, prefix in mapping.PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if prefix == SVDResidualModel.prefix and other_type != peft_type:
            raise RuntimeError(f"PEFT method {other_type} already uses the prefix {prefix!r}.")
    for table, value in entries:
        table[peft_type] = value
