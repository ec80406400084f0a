"""SpaiForImageClassification / SpaiImageProcessor behaviour on tiny random models (ViT and CLIP backbones)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    ViTModel,
    pipeline,
)

from spai_hf import SpaiConfig, SpaiForImageClassification, SpaiImageProcessor
from spai_hf.backbone_features import iter_layer_features

S = 32
TINY_HEADS = dict(patch_size=S, patch_stride=S, masking_radius=4, projection_dim=16, sca_num_heads=2, sca_hidden_size=16)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                layer_norm_eps=1e-6, image_size=S, patch_size=8)
TINY_CLIP = dict(image_size=S, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                 intermediate_size=64)


def spread_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights large enough that different images get clearly different scores."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if "query" in name else 0.1))
    return model


@pytest.fixture(scope="module")
def vit_model():
    return spread_weights(SpaiForImageClassification(SpaiConfig(backbone_config=TINY_VIT, **TINY_HEADS))).eval()


@pytest.fixture(scope="module")
def saved_vit(vit_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("spai_vit")
    vit_model.save_pretrained(folder)
    SpaiImageProcessor(patch_size=S).save_pretrained(folder)
    return folder


def random_image(height, width, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def test_config_defaults_are_the_released_model():
    config = SpaiConfig()
    assert config.model_type == "spai" and config.num_labels == 1 and config.id2label == {0: "ai-generated"}
    assert config.backbone_config.model_type == "vit" and config.backbone_config.layer_norm_eps == 1e-6
    assert config.patch_feature_dim == 6 * 12 + 1024
    assert config.image_mean == [0.485, 0.456, 0.406]
    clip = SpaiConfig(backbone_config=CLIPVisionConfig(**TINY_CLIP), **TINY_HEADS)
    assert clip.image_mean == [0.48145466, 0.4578275, 0.40821073]
    with pytest.raises(ValueError, match="patch_size"):
        SpaiConfig(backbone_config=TINY_VIT, patch_size=64)


def test_save_and_load_round_trip_in_safetensors(vit_model, saved_vit):
    assert (saved_vit / "model.safetensors").exists() and not list(saved_vit.glob("*.bin"))
    assert isinstance(AutoConfig.from_pretrained(saved_vit), SpaiConfig)
    reloaded, info = AutoModelForImageClassification.from_pretrained(saved_vit, output_loading_info=True)
    assert isinstance(reloaded, SpaiForImageClassification)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    images = [torch.rand(3, 40, 70), torch.rand(3, 32, 32)]
    reference = vit_model.state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in reloaded.state_dict().items())
    assert torch.allclose(reloaded.eval()(images).logits, vit_model(images).logits, atol=1e-6)
    assert torch.equal(reloaded.spectral_filter.frequency_mask, vit_model.spectral_filter.frequency_mask)
    assert isinstance(AutoImageProcessor.from_pretrained(saved_vit), SpaiImageProcessor)


def test_pipeline_scores_any_size_and_mode(vit_model, saved_vit):
    classifier = pipeline("image-classification", model=str(saved_vit))
    processor = SpaiImageProcessor(patch_size=S)
    scores = []
    for i, (height, width, mode) in enumerate([(20, 12, "L"), (48, 64, "RGBA"), (70, 100, "P"), (33, 90, "RGB")]):
        image = random_image(height, width, mode, seed=i)
        (result,) = classifier(image)
        logit = vit_model(processor(image, return_tensors="pt")["pixel_values"]).logits
        assert result["label"] == "ai-generated"
        assert result["score"] == pytest.approx(torch.sigmoid(logit).item(), abs=1e-6)
        scores.append(result["score"])
    assert len({round(s, 4) for s in scores}) == len(scores)


def test_processor_pads_reflect101_scales_and_never_resizes():
    processor = SpaiImageProcessor(patch_size=S)
    array = np.random.default_rng(1).integers(0, 256, (10, 50, 3), dtype=np.uint8)
    out = processor([Image.fromarray(array), random_image(40, 45)], return_tensors="pt")["pixel_values"]
    assert isinstance(out, list) and [tuple(t.shape) for t in out] == [(3, 32, 50), (3, 40, 45)]
    padded = np.pad(array, ((11, 11), (0, 0), (0, 0)), mode="reflect")  # reflect-101, centred
    assert torch.equal(out[0], torch.from_numpy(padded).permute(2, 0, 1).float() * (1 / 255))
    assert torch.equal(out[0][:, 10], out[0][:, 12]) and not torch.equal(out[0][:, 11], out[0][:, 10])  # edge not repeated
    same = processor([random_image(40, 45), random_image(40, 45, seed=2)], return_tensors="pt")["pixel_values"]
    assert isinstance(same, torch.Tensor) and same.shape == (2, 3, 40, 45)
    rgba = random_image(40, 40, "RGBA")
    assert torch.equal(processor(rgba)["pixel_values"][0], processor(rgba.convert("RGB"))["pixel_values"][0])
    with pytest.raises(TypeError, match="unsupported"):
        processor(["not an image"])


def test_bad_inputs_give_clear_errors(vit_model):
    with pytest.raises(ValueError, match="smaller than"):
        vit_model([torch.rand(3, 20, 40)])
    with pytest.raises(ValueError, match="3 channels"):
        vit_model([torch.rand(4, 40, 40)])
    with pytest.raises(ValueError, match="repeat_per_image"):
        vit_model([torch.rand(3, 40, 40)], repeat_per_image=0)


def test_vit_features_are_hidden_states_without_cls_token(vit_model):
    views = torch.randn(4, 3, S, S)
    reference = ViTModel.forward(vit_model.backbone, views, output_hidden_states=True).hidden_states
    for position, tokens in iter_layer_features(vit_model.backbone, views, [0, 1, 2]):
        assert torch.allclose(tokens, reference[position + 1][:, 1:], atol=1e-6)


def test_patch_work_publishes_sample_index_and_head_sees_one_row_per_sample(vit_model):
    seen = []

    def record(name):
        return lambda _module, args: seen.append((name, args[0].shape[0], vit_model.peft_row_sample_index))

    modules = {"q_proj": vit_model.backbone.layers[0].attention.q_proj,
               "projector": vit_model.frequency_restoration.projectors[0].fc1,
               "branch": vit_model.frequency_restoration.original_branch.proj1.fc1,
               "head": vit_model.classifier.fc1}
    hooks = [m.register_forward_pre_hook(record(name)) for name, m in modules.items()]
    try:
        vit_model.config.max_patches_per_forward = 3 * 4  # 4 patch scores per backbone call
        out = vit_model([torch.rand(3, 32, 32), torch.rand(3, 64, 96)], repeat_per_image=2)
    finally:
        vit_model.config.max_patches_per_forward = 96
        for hook in hooks:
            hook.remove()
    assert out.logits.shape == (4, 1) and vit_model.peft_row_sample_index is None
    # image 0: 1 unique crop, image 1: 6 patches -> 7 units x 2 repeats = 14 scores in calls of 4.
    backbone_calls = [index for name, rows, index in seen if name == "q_proj"]
    assert [len(index) for index in backbone_calls] == [12, 12, 12, 6]
    owners = torch.cat([index[: len(index) // 3] for index in backbone_calls])
    assert owners.tolist() == [0, 1] + [2, 3] * 6
    for index in backbone_calls:
        assert torch.equal(index, index[: len(index) // 3].repeat(3))  # views are view-major
    for name, rows, index in seen:
        if name in ("projector", "branch"):
            assert index is not None and len(index) == rows
    assert [(rows, index) for name, rows, index in seen if name == "head"] == [(4, None)]


def test_training_mode_is_differentiable_with_bce_loss(vit_model):
    model = SpaiForImageClassification(vit_model.config)
    model.load_state_dict(vit_model.state_dict())
    model.train()
    out = model([torch.rand(3, 40, 40), torch.rand(3, 32, 32)], labels=torch.tensor([1, 0]))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits[:, 0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    for module in (model.backbone.layers[0].attention.q_proj, model.frequency_restoration.projectors[0].fc1,
                   model.spectral_context_attention.to_kv, model.classifier.out_proj):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert model.frequency_restoration.original_branch.alpha.grad is not None


def test_eval_runs_under_inference_mode(vit_model):
    assert vit_model([torch.rand(3, 32, 32)]).logits.is_inference()


def test_bfloat16_mode_runs_backbone_in_bf16_and_stays_close(vit_model):
    dtypes = []
    hook = vit_model.backbone.layers[0].attention.q_proj.register_forward_hook(
        lambda _m, _a, out: dtypes.append(out.dtype)
    )
    images = [torch.rand(3, 48, 64), torch.rand(3, 32, 32)]
    try:
        fp32 = vit_model(images).logits
        vit_model.config.compute_dtype = "bfloat16"
        bf16 = vit_model(images).logits
    finally:
        vit_model.config.compute_dtype = "float32"
        hook.remove()
    assert dtypes == [torch.float32, torch.bfloat16] and bf16.dtype == torch.float32
    assert (torch.sigmoid(bf16) - torch.sigmoid(fp32)).abs().max() < 0.05


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    vision = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP))
    vision_dir = tmp_path_factory.mktemp("clip_vision")
    vision.save_pretrained(vision_dir)
    full = CLIPModel(CLIPConfig(vision_config=TINY_CLIP, projection_dim=16, text_config=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99,
        bos_token_id=0, eos_token_id=1, pad_token_id=1)))
    full_dir = tmp_path_factory.mktemp("clip_full")
    full.save_pretrained(full_dir)
    return {vision_dir: vision, full_dir: full.vision_model}


def test_clip_variant_from_pretrained_tower(clip_folders, saved_vit):
    heads = {k: v for k, v in TINY_HEADS.items() if k not in ("patch_size", "patch_stride")}
    for folder, tower in clip_folders.items():
        model = SpaiForImageClassification.from_clip_pretrained(str(folder), **heads).eval()
        assert model.config.backbone_config.model_type == "clip_vision_model" and model.config.patch_size == S
        tower_state = tower.state_dict()
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(value, tower_state[key]), key
        assert model.spectral_filter.mean.flatten().tolist() == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    with pytest.raises(ValueError, match="not a CLIP"):
        SpaiForImageClassification.from_clip_pretrained(str(saved_vit))


def test_clip_features_are_layer_norm2_outputs(clip_folders):
    folder, tower = next(iter(clip_folders.items()))
    model = SpaiForImageClassification.from_clip_pretrained(str(folder), projection_dim=16, sca_num_heads=2,
                                                            sca_hidden_size=16).eval()
    captured = []
    hooks = [layer.layer_norm2.register_forward_hook(lambda _m, _a, out: captured.append(out))
             for layer in tower.encoder.layers]
    views = torch.randn(3, 3, S, S)
    try:
        tower.eval()(views)
    finally:
        for hook in hooks:
            hook.remove()
    features = dict(iter_layer_features(model.backbone, views, [0, 1, 2]))
    for position, reference in enumerate(captured):
        assert torch.allclose(features[position], reference[:, 1:], atol=1e-6)


def test_clip_variant_end_to_end(clip_folders, tmp_path):
    folder = next(iter(clip_folders))
    model = spread_weights(SpaiForImageClassification.from_clip_pretrained(
        str(folder), projection_dim=16, sca_num_heads=2, sca_hidden_size=16)).eval()
    model.save_pretrained(tmp_path)
    SpaiImageProcessor(patch_size=S).save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    images = [torch.rand(3, 50, 40), torch.rand(3, 64, 64)]
    out = reloaded(images, output_attentions=True)
    assert torch.allclose(out.logits, model(images).logits, atol=1e-6) and out.logits.shape == (2, 1)
    assert [a.shape[0] for a in out.attentions] == [5, 4]
    (result,) = pipeline("image-classification", model=str(tmp_path))(random_image(45, 70))
    assert result["label"] == "ai-generated" and 0 < result["score"] < 1
