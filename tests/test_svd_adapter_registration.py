"""The SVD residual method is registered with PEFT the way PEFT's own registration does it.

PEFT 0.21's ``register_peft_method`` refuses names missing from ``PeftType``, so ``svd_adapter`` fills the mappings
that function fills. These tests fail loudly if a PEFT release changes which mappings it fills or starts accepting new
names (then ``svd_adapter/registration.py`` should switch to the public function).
"""

from __future__ import annotations

import inspect
import re

import pytest
from peft import PeftConfig, mapping
from peft.utils import register_peft_method

import svd_adapter
from svd_adapter import SVDPeftType, SVDResidualConfig, SVDResidualModel


def test_fills_every_mapping_register_peft_method_fills():
    filled = set(re.findall(r"PEFT_TYPE_TO_\w+_MAPPING\[", inspect.getsource(register_peft_method)))
    assert filled == {
        "PEFT_TYPE_TO_PREFIX_MAPPING[",
        "PEFT_TYPE_TO_CONFIG_MAPPING[",
        "PEFT_TYPE_TO_TUNER_MAPPING[",
        "PEFT_TYPE_TO_MIXED_MODEL_MAPPING[",  # only for mixed-compatible methods, which this one is not
    }, "PEFT's register_peft_method changed: update svd_adapter/registration.py"
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING["SVD_RESIDUAL"] is SVDResidualConfig
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING["SVD_RESIDUAL"] is SVDResidualModel
    assert mapping.PEFT_TYPE_TO_PREFIX_MAPPING["SVD_RESIDUAL"] == "svd_"


def test_public_registration_still_refuses_new_names():
    with pytest.raises(ValueError, match="Unknown PEFT type"):
        register_peft_method(name="svd_residual", config_cls=SVDResidualConfig, model_cls=SVDResidualModel)


def test_register_is_idempotent_and_guards_against_clashes(monkeypatch):
    svd_adapter.register()
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING[SVDPeftType.SVD_RESIDUAL] is SVDResidualModel
    monkeypatch.setitem(mapping.PEFT_TYPE_TO_TUNER_MAPPING, SVDPeftType.SVD_RESIDUAL, object)
    with pytest.raises(RuntimeError, match="different method"):
        svd_adapter.register()


def test_config_dispatches_from_its_json_type(tmp_path):
    SVDResidualConfig(r=0.5, target_modules=["q_proj"]).save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is SVDResidualConfig and loaded.r == 0.5 and loaded.target_modules == {"q_proj"}
    assert loaded.peft_type == "SVD_RESIDUAL"
