"""SVD residual adapters (svd_adapter) on both SPAI variants, including mixed-adapter scoring of one image."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import CLIPVisionConfig

from spai_hf import SpaiConfig, SpaiForImageClassification
from svd_adapter import SVDResidualConfig

S = 32
HEADS = dict(patch_size=S, patch_stride=S, masking_radius=4, projection_dim=16, sca_num_heads=2, sca_hidden_size=16)
BACKBONES = {
    "vit": dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                layer_norm_eps=1e-6, image_size=S, patch_size=8),
    "clip": CLIPVisionConfig(image_size=S, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64),
}
PROJECTIONS = {"vit": ("q_proj", "k_proj", "v_proj", "o_proj"), "clip": ("q_proj", "k_proj", "v_proj", "out_proj")}


def _base_with_visible_adapters(variant: str) -> SpaiForImageClassification:
    """A seeded tiny SPAI (eval mode) with weights large enough that adapters visibly move the logits."""
    torch.manual_seed(0)
    base = SpaiForImageClassification(SpaiConfig(backbone_config=BACKBONES[variant], **HEADS)).eval()
    with torch.no_grad():
        for name, param in base.named_parameters():
            if "norm" not in name:
                param.normal_(0, 0.3 if "query" in name else 0.1)
    return base


@pytest.mark.parametrize("variant", list(BACKBONES))
def test_mixed_adapter_rows_match_one_adapter_at_a_time(variant):
    base = _base_with_visible_adapters(variant)
    images = [torch.rand(3, 40, 70), torch.rand(3, 32, 32)]
    base_logits = base(images).logits
    model = get_peft_model(base, SVDResidualConfig(), adapter_name="a")
    model.add_adapter("b", SVDResidualConfig())
    targets = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "svd_S")}
    assert targets == set(PROJECTIONS[variant])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("svd_S.b"):
                param.mul_(50.0)
    model.eval()
    model.set_adapter("a")
    logits_a = model(pixel_values=images).logits
    assert torch.allclose(logits_a, base_logits, atol=1e-5)  # a fresh adapter leaves the base unchanged
    model.set_adapter("b")
    logits_b = model(pixel_values=images).logits
    assert (logits_b - logits_a).abs().max() > 1e-4  # 10x the tolerance used below
    mixed = model(pixel_values=images, repeat_per_image=2, adapter_names=["a", "b"] * len(images)).logits
    assert torch.allclose(mixed.view(2, 2), torch.cat([logits_a, logits_b], dim=1), atol=1e-5)


def test_mixed_batch_routes_trained_head_copies():
    """Adapters that also train head Linears (``modules_to_save``): in one mixed batch every row uses its own
    adapter's copy, the base rows and adapters without a copy use the original head."""
    base = _base_with_visible_adapters("vit")
    images = [torch.rand(3, 40, 70), torch.rand(3, 32, 32)]
    base_logits = base(images).logits
    head = ["classifier.fc2", "classifier.out_proj"]
    model = get_peft_model(base, SVDResidualConfig(modules_to_save=head), adapter_name="with_head")
    model.add_adapter("plain", SVDResidualConfig())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modules_to_save.with_head" in name:
                param.add_(torch.randn_like(param) * 0.5)
            elif name.endswith("svd_S.plain"):
                param.mul_(50.0)
    model.eval()
    alone = {}
    for name in ("with_head", "plain"):
        model.set_adapter(name)
        alone[name] = model(pixel_values=images).logits
        assert (alone[name] - base_logits).abs().max() > 1e-4  # 10x the tolerance used below
    names = ["__base__", "with_head", "plain"]
    mixed = model(pixel_values=images, repeat_per_image=3, adapter_names=names * len(images)).logits.view(2, 3)
    expected = torch.cat([base_logits, alone["with_head"], alone["plain"]], dim=1)
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=0)
