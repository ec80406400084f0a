"""Converted tiny reference checkpoint + image processor + model reproduce the original SPAI numbers.

Every expected number is read from tests/fixtures/spai_reference/expected.json (produced by the original code).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from spai_hf import SpaiForImageClassification, SpaiImageProcessor
from spai_hf.backbone_features import iter_layer_features
from spai_hf.convert_spai_checkpoint import convert_spai_checkpoint
from spai_hf.patching import crop_patches, layout_patches

FIXTURE = Path(__file__).parent / "fixtures" / "spai_reference"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
ORIGINAL_CONFIG = json.loads((FIXTURE / "config.json").read_text())
IMAGES = sorted(EXPECTED["images"])
OUTPUT_ATOL = 1e-5
INTERMEDIATE_ATOL = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spai") / "tiny"
    convert_spai_checkpoint(
        FIXTURE / "spai_tiny.pth", folder, num_attention_heads=ORIGINAL_CONFIG["MODEL"]["VIT"]["NUM_HEADS"]
    )
    model = SpaiForImageClassification.from_pretrained(folder).eval()
    return model, SpaiImageProcessor.from_pretrained(folder)


def load(processor, name):
    return processor(Image.open(FIXTURE / name))["pixel_values"][0]


def close(actual, expected, atol):
    expected = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape
    assert (actual.double() - expected).abs().max().item() <= atol


@pytest.mark.parametrize("name", IMAGES)
def test_preprocessing_matches_original(converted, name):
    _, processor = converted
    expected = EXPECTED["images"][name]
    pixels = load(processor, name)
    assert list(pixels.shape) == expected["input_shape"][1:]
    assert list(processor.pad_amounts(*expected["source_hw"])) == expected["pad_top_bottom_left_right"]
    assert abs(pixels.double().sum().item() - expected["input_sum"]) < 1e-6
    assert pixels[0, 0, :8].tolist() == expected["input_first_row_ch0_first8"]
    layout = layout_patches(pixels.shape[1], pixels.shape[2], 32, 32, 4)
    assert [list(box) for box in layout.boxes] == expected["patch_offsets_top_left"]
    assert layout.five_crop == expected["five_crop"]


@pytest.mark.parametrize("name", IMAGES)
def test_logits_and_attention_match_original(converted, name):
    model, processor = converted
    expected = EXPECTED["images"][name]
    captured = {}
    hook = model.spectral_context_attention.to_out.register_forward_hook(
        lambda _m, _a, out: captured.__setitem__("aggregated", out)
    )
    try:
        out = model([load(processor, name)], output_attentions=True)
    finally:
        hook.remove()
    close(out.logits[0, 0], expected["logit"], OUTPUT_ATOL)
    close(torch.sigmoid(out.logits[0, 0]), expected["score"], OUTPUT_ATOL)
    close(out.attentions[0], expected["attention_mean_over_heads"], OUTPUT_ATOL)
    close(out.head_attentions[0], expected["attention_per_head"], OUTPUT_ATOL)
    close(captured["aggregated"][0], expected["aggregated_feature"], INTERMEDIATE_ATOL)
    offsets = [[top, left] for top, left, _ in out.patch_boxes[0].tolist()]
    assert offsets == expected["patch_offsets_top_left"]


@pytest.mark.parametrize("name", IMAGES)
def test_first_patch_intermediates_match_original(converted, name):
    model, processor = converted
    expected = EXPECTED["images"][name]["patch0"]
    pixels = load(processor, name)
    layout = layout_patches(pixels.shape[1], pixels.shape[2], 32, 32, 4)
    filt = model.spectral_filter
    with torch.inference_mode():
        views = filt(crop_patches(pixels, layout.boxes[:1], 32))  # (3, 1, 3, S, S) normalised
        low, high = (views[1:, 0] * filt.std + filt.mean).unbind(0)
        close(low.double().sum(), expected["low_freq_clamped_sum"], 1e-3)
        close(high.double().sum(), expected["hi_freq_clamped_sum"], 1e-3)
        close(low[0, 0, :8], expected["low_freq_clamped_ch0_row0_first8"], INTERMEDIATE_ATOL)
        close(high[0, 0, :8], expected["hi_freq_clamped_ch0_row0_first8"], INTERMEDIATE_ATOL)
        estimator = model.frequency_restoration
        token_means, projected_means, similarity, branch = [], [], [], []
        for position, tokens in iter_layer_features(model.backbone, views.flatten(0, 1), model.config.feature_layers):
            if position == 0:
                close(tokens[0, 0, :8], expected["backbone_orig_layer0_token0_first8"], INTERMEDIATE_ATOL)
            token_means.append(tokens[0].mean(0))
            projected = estimator.project(position, tokens)
            projected_means.append(projected[0].mean(0))
            stats, branch_input = estimator.layer_statistics(projected.unflatten(0, (3, 1)))
            similarity.append(stats)
            branch.append(branch_input)
        feature = estimator.combine(torch.stack(similarity, 1), torch.stack(branch, 1))[0]
    n = model.config.num_feature_layers
    close(torch.stack(token_means), expected["backbone_orig_token_mean_per_layer"], INTERMEDIATE_ATOL)
    close(torch.stack(projected_means), expected["projected_orig_token_mean_per_layer"], INTERMEDIATE_ATOL)
    close(feature[: 6 * n], expected["similarity_stats"], INTERMEDIATE_ATOL)
    close(feature[6 * n :], expected["original_branch"], INTERMEDIATE_ATOL)
    close(feature, expected["feature"], INTERMEDIATE_ATOL)


def test_results_do_not_depend_on_grouping_or_chunking(converted):
    model, processor = converted
    order = EXPECTED["batch_check"]["files_in_order"]
    images = [load(processor, name) for name in order]
    reference = torch.tensor(EXPECTED["batch_check"]["one_by_one_logits"], dtype=torch.float64)
    one_by_one = torch.cat([model([image]).logits for image in images])[:, 0]
    assert (one_by_one.double() - reference).abs().max() <= OUTPUT_ATOL
    original_limit = model.config.max_patches_per_forward
    try:
        for limit in (1, 1000):  # one patch per backbone call, everything in one call
            model.config.max_patches_per_forward = limit
            batched = model(images, output_attentions=True)
            assert (batched.logits[:, 0].double() - reference).abs().max() <= OUTPUT_ATOL
            for name, weights in zip(order, batched.attentions):
                close(weights, EXPECTED["images"][name]["attention_mean_over_heads"], OUTPUT_ATOL)
    finally:
        model.config.max_patches_per_forward = original_limit


def test_repeat_per_image_scores_each_image_n_times(converted):
    model, processor = converted
    images = [load(processor, name) for name in IMAGES[:3]]
    single = model(images).logits
    repeated = model(images, repeat_per_image=3, output_attentions=True)
    assert repeated.logits.shape == (9, 1)
    assert torch.allclose(repeated.logits.view(3, 3), single.expand(3, 3), atol=OUTPUT_ATOL)
    assert len(repeated.attentions) == 9 and len(repeated.patch_boxes) == 9
