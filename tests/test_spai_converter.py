"""The converter: full released layout, tiny fixture, and refusal of checkpoints it cannot map exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from spai_hf import SpaiConfig, SpaiForImageClassification
from spai_hf.convert_spai_checkpoint import (
    CheckpointMismatchError,
    convert_spai_checkpoint,
    convert_state_dict,
    load_original_state_dict,
)
from spai_hf.spectral_filter import build_frequency_mask

FIXTURE = Path(__file__).parent / "fixtures" / "spai_reference"
TINY = FIXTURE / "spai_tiny.pth"
TINY_HEADS = json.loads((FIXTURE / "config.json").read_text())["MODEL"]["VIT"]["NUM_HEADS"]


def full_layout() -> tuple[dict[str, torch.Tensor], list[str]]:
    """The released spai.pth layout from spai_full_keys.txt, as meta tensors (the mask holds real values)."""
    state, unused = {}, []
    radius = int(re.search(r"inside radius (\d+)", (FIXTURE / "spai_full_keys.txt").read_text()).group(1))
    for line in (FIXTURE / "spai_full_keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype, used = line.split("\t")
        shape = json.loads(shape)
        if key == "mfvit.frequencies_mask":
            state[key] = build_frequency_mask(shape[0], radius)
        else:
            state[key] = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        if used == "UNUSED":
            unused.append(key)
    return state, unused


def test_full_released_layout_converts_to_the_default_config():
    state, unused = full_layout()
    config, mapped = convert_state_dict(state)
    released = SpaiConfig()
    for field in ("patch_size", "patch_stride", "masking_radius", "feature_layers", "projection_dim",
                  "sca_num_heads", "sca_hidden_size", "head_mlp_ratio", "image_mean", "image_std"):
        assert getattr(config, field) == getattr(released, field), field
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                  "image_size", "layer_norm_eps", "hidden_act"):
        assert getattr(config.backbone_config, field) == getattr(released.backbone_config, field), field
    with torch.device("meta"):
        model_keys = SpaiForImageClassification(config).state_dict()
    assert set(mapped) == set(model_keys)
    # 12 fused qkv become 36 projections + 12 zero key biases; the mask and the unused keys are dropped.
    assert len(mapped) == len(state) - len(unused) - 1 + 12 * 3
    used_elements = sum(t.numel() for k, t in state.items() if k not in unused and k != "mfvit.frequencies_mask")
    zero_key_bias = 12 * 768
    assert sum(t.numel() for t in mapped.values()) == used_elements + zero_key_bias


def test_tiny_checkpoint_converts_to_a_folder_that_reloads_exactly(tmp_path):
    folder = convert_spai_checkpoint(TINY, tmp_path / "tiny", num_attention_heads=TINY_HEADS)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no staging folder left behind
    model, info = SpaiForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original = load_original_state_dict(TINY)
    attention = model.backbone.layers[1].attention
    q, k, v = original["mfvit.vit.blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(attention.q_proj.weight, q)
    assert torch.equal(attention.k_proj.weight, k)
    assert torch.equal(attention.v_proj.weight, v)
    assert torch.equal(attention.q_proj.bias, original["mfvit.vit.blocks.1.attn.q_bias"])
    assert torch.equal(attention.v_proj.bias, original["mfvit.vit.blocks.1.attn.v_bias"])
    assert not attention.k_proj.bias.any()
    assert torch.equal(model.spectral_context_attention.query, original["patch_aggregator"])
    assert model.config.masking_radius == 4 and model.config.backbone_config.num_attention_heads == TINY_HEADS
    assert torch.equal(model.spectral_filter.frequency_mask.long(), original["mfvit.frequencies_mask"])


def test_existing_destination_is_replaced_only_on_request(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        convert_spai_checkpoint(TINY, dst, num_attention_heads=TINY_HEADS)
    assert (dst / "keep.txt").read_text() == "user data"
    convert_spai_checkpoint(TINY, dst, overwrite=True, num_attention_heads=TINY_HEADS)
    assert (dst / "model.safetensors").exists() and not (dst / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def tiny_state():
    return dict(load_original_state_dict(TINY))


def test_unknown_keys_are_refused_and_listed():
    state = tiny_state()
    state["mfvit.vit.blocks.0.attn.rel_pos_bias"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match="rel_pos_bias"):
        convert_state_dict(state, num_attention_heads=TINY_HEADS)


def test_missing_keys_are_refused_and_listed():
    state = tiny_state()
    del state["cls_head.head.3.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"classifier\.fc2\.bias"):
        convert_state_dict(state, num_attention_heads=TINY_HEADS)


def test_a_mask_that_is_not_the_spai_disk_is_refused():
    state = tiny_state()
    state["mfvit.frequencies_mask"] = state["mfvit.frequencies_mask"].clone()
    state["mfvit.frequencies_mask"][0, 0] = 1
    with pytest.raises(CheckpointMismatchError, match="frequencies_mask"):
        convert_state_dict(state, num_attention_heads=TINY_HEADS)
    with pytest.raises(CheckpointMismatchError, match="radius 5"):
        convert_state_dict(tiny_state(), num_attention_heads=TINY_HEADS, masking_radius=5)


def test_head_count_is_required_when_it_cannot_be_inferred():
    with pytest.raises(CheckpointMismatchError, match="num_attention_heads"):
        convert_state_dict(tiny_state())


def test_checkpoints_with_pickled_objects_are_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_state(), "config": SpaiConfig}, path)  # a class: refused by weights_only
    with pytest.raises(CheckpointMismatchError, match="weights_only"):
        load_original_state_dict(path)
    torch.save({"weights": tiny_state()}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointMismatchError, match="'model'"):
        load_original_state_dict(tmp_path / "nomodel.pth")
