"""Behaviour of the SVD residual PEFT method on tiny CLIP vision and ViT models, through the stock PEFT API."""

from __future__ import annotations

import json
import re

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

import svd_adapter
from svd_adapter import BaseFingerprintMismatchError, SVDResidualConfig, SVDResidualLayer

HIDDEN, LAYERS = 32, 2


def tiny_clip(seed: int = 0, hidden: int = HIDDEN) -> CLIPVisionModel:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=LAYERS, num_attention_heads=4,
        image_size=32, patch_size=8,
    )
    return CLIPVisionModel(config).eval()


def tiny_vit(seed: int = 0, classifier: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
        image_size=32, patch_size=8, num_labels=2,
    )
    return (ViTForImageClassification(config) if classifier else ViTModel(config)).eval()


def pixels(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def hidden(model: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x, **kwargs).last_hidden_state


def drift(model: nn.Module, adapter: str, scale: float = 0.2, seed: int = 0) -> None:
    """Move an adapter's trainable factors away from their SVD initialisation, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if re.search(rf"svd_[USV]\.{adapter}$", name):
                param.add_(scale * torch.randn(param.shape, generator=gen))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture()
def no_svd(monkeypatch):
    """Make any SVD call fail, to prove a code path runs none."""

    def refuse(*args, **kwargs):
        raise AssertionError("an SVD ran")

    monkeypatch.setattr(torch.linalg, "svd", refuse)


@pytest.mark.parametrize(
    ("make", "suffixes"),
    [(tiny_clip, {"q_proj", "k_proj", "v_proj", "out_proj"}), (tiny_vit, {"q_proj", "k_proj", "v_proj", "o_proj"})],
)
def test_default_targets_identity_at_init_and_trainable_count(make, suffixes):
    base = make()
    x = pixels()
    reference = hidden(base, x)
    model = get_peft_model(base, SVDResidualConfig())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SVDResidualLayer)}
    assert {n.rsplit(".", 1)[1] for n in layers} == suffixes
    assert len(layers) == 4 * LAYERS
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == len(layers) * (HIDDEN + HIDDEN + 1)  # k = 1 triplet per target
    torch.testing.assert_close(hidden(model, x), reference, rtol=0, atol=1e-6)  # the base model at step 0


def test_factors_are_the_smallest_triplets_and_ranks_resolve():
    model = get_peft_model(tiny_clip(), SVDResidualConfig(r=0.75, rank_pattern={"q_proj": 30}))
    modules = dict(model.named_modules())
    q = next(m for n, m in modules.items() if n.endswith("layers.0.self_attn.q_proj"))
    v = next(m for n, m in modules.items() if n.endswith("layers.0.self_attn.v_proj"))
    assert q.svd_S["default"].shape == (2,) and v.svd_S["default"].shape == (8,)
    weight = q.get_base_layer().weight.detach()
    singular = torch.linalg.svdvals(weight)
    torch.testing.assert_close(q.svd_S["default"].detach(), singular[-2:])
    assert torch.equal(q.svd_U["default"], q.svd_U0["default"])

    config = SVDResidualConfig(residual_rank=3)
    assert config.ranks_for("x", 32, 48) == (29, 3)
    with pytest.raises(ValueError, match="not both"):
        SVDResidualConfig(r=4, residual_rank=2)
    with pytest.raises(ValueError, match="no trainable triplet"):
        SVDResidualConfig(r=32).ranks_for("layer", 32, 32)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        SVDResidualConfig(r=1.5)


def test_gradients_reach_only_residual_factors_and_modules_to_save():
    model = get_peft_model(tiny_vit(classifier=True), SVDResidualConfig(modules_to_save=["classifier"]))
    model.train()
    logits = model(pixel_values=pixels()).logits
    logits.sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    requires = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == requires
    assert all(re.search(r"svd_[USV]\.default$", n) or "classifier.modules_to_save" in n for n in requires)
    assert any("classifier.modules_to_save.default" in n for n in requires)
    assert sum(bool(re.search(r"svd_[USV]\.default$", n)) for n in requires) == 3 * 4 * LAYERS
    # the initial residual factors are frozen buffers, not parameters
    assert not any("svd_U0" in n for n, _ in model.named_parameters())


def test_half_precision_base_is_decomposed_in_float32():
    base = tiny_clip().to(torch.bfloat16)
    model = get_peft_model(base, SVDResidualConfig())
    layer = next(m for m in model.modules() if isinstance(m, SVDResidualLayer))
    assert layer.svd_U["default"].dtype == torch.float32 and layer.svd_U0["default"].dtype == torch.float32
    weight = layer.get_base_layer().weight.float()
    expected = torch.linalg.svdvals(weight)[-1]
    torch.testing.assert_close(layer.svd_S["default"].detach()[0], expected)
    out = hidden(model, pixels().to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_save_and_load_round_trip_without_svd(tmp_path, monkeypatch):
    model = get_peft_model(tiny_clip(), SVDResidualConfig())
    drift(model, "default")
    x = pixels()
    trained = hidden(model, x)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert {k.rsplit(".", 1)[-1] for k in saved} == {"svd_U", "svd_S", "svd_V", "svd_U0", "svd_S0", "svd_V0"}
    assert len(saved) == 6 * 4 * LAYERS
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "SVD_RESIDUAL" and len(config["base_fingerprint"]) == 4 * LAYERS

    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: pytest.fail("loading ran an SVD"))
    loaded = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    torch.testing.assert_close(hidden(loaded, x), trained, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    # a second adapter through load_adapter, also without an SVD
    loaded.load_adapter(tmp_path, adapter_name="again")
    loaded.set_adapter("again")
    torch.testing.assert_close(hidden(loaded, x), trained, rtol=0, atol=0)
    # PEFT's meta-device loading path
    lean = PeftModel.from_pretrained(tiny_clip(), tmp_path, low_cpu_mem_usage=True)
    torch.testing.assert_close(hidden(lean, x), trained)


def test_adapter_never_loaded_is_decomposed_at_first_use_or_save(tmp_path):
    get_peft_model(tiny_clip(), SVDResidualConfig()).save_pretrained(tmp_path / "made")
    config = SVDResidualConfig.from_pretrained(tmp_path / "made")  # carries a fingerprint, so tensors are awaited
    base = tiny_clip()
    model = get_peft_model(base, config)
    layer = next(m for m in model.modules() if isinstance(m, SVDResidualLayer))
    assert layer.svd_S["default"].abs().sum() == 0  # nothing decomposed yet
    model.save_pretrained(tmp_path / "again")
    saved = load_file(tmp_path / "again" / "adapter_model.safetensors")
    original = load_file(tmp_path / "made" / "adapter_model.safetensors")
    assert saved.keys() == original.keys()
    for key in saved:
        torch.testing.assert_close(saved[key].abs(), original[key].abs())  # singular vectors up to sign


def test_fingerprint_mismatch_is_refused_before_touching_the_model(tmp_path):
    model = get_peft_model(tiny_clip(), SVDResidualConfig())
    model.save_pretrained(tmp_path)

    other = tiny_clip(seed=5)
    with pytest.raises(BaseFingerprintMismatchError, match=r"encoder\.layers\.0\.self_attn\.\w+_proj: sampled weight"):
        PeftModel.from_pretrained(other, tmp_path)
    assert not any(isinstance(m, SVDResidualLayer) for m in other.modules())

    wider = tiny_clip(hidden=48)
    with pytest.raises(BaseFingerprintMismatchError, match=r"weight shape \(48, 48\)"):
        PeftModel.from_pretrained(wider, tmp_path)

    peft_other = get_peft_model(tiny_clip(seed=5), SVDResidualConfig())
    with pytest.raises(BaseFingerprintMismatchError):
        peft_other.load_adapter(tmp_path, adapter_name="foreign")
    assert set(peft_other.peft_config) == {"default"}

    # the same base in half precision still matches; the expert opt-out loads onto any base of the same shape
    PeftModel.from_pretrained(tiny_clip().to(torch.bfloat16), tmp_path)
    config = SVDResidualConfig.from_pretrained(tmp_path)
    config.check_base_fingerprint = False
    PeftModel.from_pretrained(tiny_clip(seed=5), tmp_path, config=config)


def test_fingerprint_check_sees_through_merged_adapters(tmp_path):
    first = get_peft_model(tiny_clip(), SVDResidualConfig())
    first.save_pretrained(tmp_path)
    model = get_peft_model(tiny_clip(), SVDResidualConfig())
    drift(model, "default", scale=1.0)
    model.merge_adapter()
    model.load_adapter(tmp_path, adapter_name="second")  # base differs from the merged weights, not from the base
    assert "second" in model.peft_config


def test_switch_disable_delete_adapters(tmp_path):
    base = tiny_clip()
    x = pixels()
    reference = hidden(base, x)
    model = get_peft_model(base, SVDResidualConfig())
    drift(model, "default", seed=1)
    model.add_adapter("other", SVDResidualConfig())
    drift(model, "other", seed=2)
    out_default = hidden(model, x)
    model.set_adapter("other")
    out_other = hidden(model, x)
    assert rel(out_default, reference) > 1e-3 and rel(out_other, out_default) > 1e-3
    with model.disable_adapter():
        torch.testing.assert_close(hidden(model, x), reference, rtol=0, atol=0)
    model.delete_adapter("other")
    assert set(model.peft_config) == {"default"}
    assert not any("other" in n for n, _ in model.named_parameters())
    assert not any("other" in n for n, _ in model.named_buffers())
    model.set_adapter("default")
    torch.testing.assert_close(hidden(model, x), out_default, rtol=0, atol=0)


def test_merge_unmerge_and_merge_and_unload_are_exact():
    base = tiny_clip()
    x = pixels()
    weights = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, SVDResidualConfig())
    drift(model, "default")
    unmerged = hidden(model, x)
    model.merge_adapter()
    assert rel(hidden(model, x), unmerged) < 1e-5
    model.unmerge_adapter()
    restored = {n.replace(".base_layer", ""): p for n, p in model.base_model.model.named_parameters()}
    for name, value in weights.items():
        assert rel(restored[name].detach(), value) < 1e-6, name
    plain = model.merge_and_unload()
    assert not any(isinstance(m, SVDResidualLayer) for m in plain.modules())
    assert rel(hidden(plain, x), unmerged) < 1e-5


def test_mixed_adapter_batch_matches_each_adapter_alone():
    model = get_peft_model(tiny_vit(), SVDResidualConfig())
    drift(model, "default", seed=1)
    model.add_adapter("other", SVDResidualConfig())
    drift(model, "other", seed=2)
    model.eval()
    x = pixels(batch=4)
    names = ["other", "__base__", "default", "other"]
    mixed = hidden(model, x, adapter_names=names)
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                alone = hidden(model, x[i : i + 1])
        else:
            model.set_adapter(name)
            alone = hidden(model, x[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown adapter"):
        hidden(model, x, adapter_names=["nope"] * 4)
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(pixel_values=x, adapter_names=names)


class RepeatedRows(nn.Module):
    """Like SPAI: runs several rows per sample through the backbone and publishes which sample each row belongs to."""

    def __init__(self, backbone: nn.Module, repeats: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.repeats = repeats
        self.peft_row_sample_index = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch = pixel_values.shape[0]
        rows = pixel_values.repeat_interleave(self.repeats, dim=0)
        rows = rows + torch.linspace(0, 1, self.repeats).repeat(batch).view(-1, 1, 1, 1)  # distinct views
        self.peft_row_sample_index = torch.arange(batch).repeat_interleave(self.repeats)
        try:
            out = self.backbone(pixel_values=rows).pooler_output
        finally:
            self.peft_row_sample_index = None
        return out.view(batch, self.repeats, -1).mean(1)


@pytest.mark.parametrize("make", [tiny_clip, tiny_vit])
def test_mixed_batch_through_row_sample_index(make):
    wrapper = RepeatedRows(make()).eval()
    model = get_peft_model(wrapper, SVDResidualConfig(target_modules=svd_adapter.DEFAULT_TARGET_MODULES["spai"]))
    drift(model, "default", seed=1)
    model.add_adapter("other", SVDResidualConfig(target_modules=svd_adapter.DEFAULT_TARGET_MODULES["spai"]))
    drift(model, "other", seed=2)
    model.eval()
    x = pixels(batch=3)
    names = ["other", "default", "__base__"]
    with torch.no_grad():
        mixed = model(pixel_values=x, adapter_names=names)
        for i, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(pixel_values=x[i : i + 1])
            else:
                model.set_adapter(name)
                alone = model(pixel_values=x[i : i + 1])
            torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-5, atol=1e-6)

    plain = get_peft_model(RepeatedRows(make()), SVDResidualConfig(target_modules=["q_proj"])).eval()
    plain.base_model.model.forward = lambda pixel_values: plain.base_model.model.backbone(
        pixel_values=pixel_values.repeat_interleave(2, dim=0)
    )
    with pytest.raises(ValueError, match="peft_row_sample_index"):
        plain(pixel_values=x, adapter_names=["default"] * 3)


def test_regularisers_vanish_at_init_and_grow_with_drift():
    model = get_peft_model(tiny_clip(), SVDResidualConfig(orthogonality_weight=2.0, norm_weight=3.0))
    terms = model.base_model.svd_regularization_terms()
    assert terms["orthogonality"].item() < 1e-9 and terms["norm"].item() < 1e-9
    assert model.svd_regularization_loss().item() < 1e-8  # reachable through PeftModel's passthrough
    previous = {"orthogonality": 0.0, "norm": 0.0}
    for scale in (0.05, 0.2):
        drift(model, "default", scale=scale, seed=3)
        terms = model.svd_regularization_terms()
        assert all(terms[k].item() > previous[k] + 1e-7 for k in terms)
        previous = {k: v.item() for k, v in terms.items()}
    loss = model.svd_regularization_loss()
    torch.testing.assert_close(loss, 2.0 * terms["orthogonality"] + 3.0 * terms["norm"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
