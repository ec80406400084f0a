"""`spai-svd infer` and `spai-svd test` driven in subprocesses on a tiny SPAI model with two tiny SVD adapters.

Three command runs share one set of files (each run costs a torch + transformers start-up):
1. infer, base + two adapters (folder + explicit paths), awkward images, heatmaps, a low --max-pixels;
2. infer, second adapter alone, by Hub id from a pre-filled offline cache, glob + folder inputs, one image per
   batch and no decoding workers;
3. test, first adapter alone, by registered name, on a labelled CSV with splits and generators.
Runs 2 and 3 score each adapter alone, so comparing them with run 1 checks mixed-adapter batches.
"""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from peft import get_peft_model
from PIL import Image

import svd_adapter
from cli_support import fill_hub_cache, run_cli, write_adapter_metadata
from spai_hf import SpaiConfig, SpaiForImageClassification
from spai_hf.metrics import compute_detection_metrics
from spai_hf.registry import AdapterRegistry

MAX_PIXELS = 100_000
TOLERANCE = 2e-6  # scores are written with 6 decimals; batching changes logits by ~1e-6 at most


def _tiny_models(root):
    torch.manual_seed(0)
    config = SpaiConfig(
        backbone_config={"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "intermediate_size": 64, "image_size": 32, "patch_size": 16},
        patch_size=32, patch_stride=32, masking_radius=4, projection_dim=16, sca_num_heads=2, sca_hidden_size=16,
        initializer_range=0.3,  # wide weights so that scores spread out and adapters visibly change them
    )
    SpaiForImageClassification(config).eval().save_pretrained(root / "base")
    for name, threshold in (("a1", 0.5), ("a2", None)):
        model = get_peft_model(SpaiForImageClassification.from_pretrained(root / "base"),
                               svd_adapter.SVDResidualConfig(residual_rank=2))
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn_like(parameter) * 0.5)
        model.save_pretrained(root / name)
        write_adapter_metadata(root / name, generator=f"gen-{name}", threshold=threshold)


def _images(folder):
    rng = np.random.default_rng(0)
    folder.mkdir()
    (folder / "nested").mkdir()

    def rgb(height, width):
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    rgb(70, 90).save(folder / "good.png")
    rgb(40, 50).save(folder / "nested" / "photo.jpg", quality=90)
    rgb(1, 1).save(folder / "one_pixel.png")
    Image.fromarray(rng.integers(0, 256, (48, 40, 4), dtype=np.uint8), "CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65536, (36, 52), dtype=np.uint16)).save(folder / "sixteen_bit.png")
    rgb(300, 400).save(folder / "oversized.png")  # 120 000 px > MAX_PIXELS
    buffer = io.BytesIO()
    rgb(64, 64).save(buffer, "PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    rgb(64, 64).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    data[200:] = bytes(len(data) - 200)  # header kept, entropy-coded data zeroed
    (folder / "corrupt.jpg").write_bytes(bytes(data))
    notes = folder.parent / "notes.txt"
    notes.write_text("not an image")
    return notes


def _rows(path):
    with open(path, newline="") as handle:
        return {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_infer")
    _tiny_models(root)
    notes = _images(root / "images")
    registry = root / "adapters" / "registry.json"
    AdapterRegistry(registry).add("first", str(root / "a1"))
    hub_home = root / "hf_home"
    fill_hub_cache(hub_home / "hub", "someone/second-adapter", root / "a2")
    with open(root / "data.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "split", "class", "generator"])
        writer.writerows([
            ["images/good.png", "test", 0, "alpha"], ["images/nested/photo.jpg", "test", 1, "alpha"],
            ["images/one_pixel.png", "test", 1, "beta"], ["images/cmyk.jpg", "test", 0, "beta"],
            ["images/sixteen_bit.png", "val", 0, "alpha"], ["images/good.png", "val", 1, "alpha"],
            ["images/truncated.png", "test", 1, "beta"],
        ])
    common = ["--base", root / "base", "--no-progress", "--max-pixels", MAX_PIXELS]
    mixed = run_cli("infer", *common, "--adapter", root / "a1", "--adapter", root / "a2", root / "images", notes,
                    "--output", root / "mixed.csv", "--heatmaps", root / "heatmaps", "--batch-size", 4)
    second = run_cli("infer", *common, "--adapter", "someone/second-adapter", root / "images" / "*.*",
                     root / "images" / "nested", "--output", root / "second.csv", "--batch-size", 1, "--num-workers", 0,
                     env={"HF_HOME": str(hub_home), "HF_HUB_CACHE": str(hub_home / "hub"), "HF_HUB_OFFLINE": "1"})
    test = run_cli("test", "--base", root / "base", "--adapter", "first", "--registry", registry, "--no-progress",
                   "--data", root / "data.csv", "--split", "all", "--output", root / "test_out")
    return root, {"mixed": mixed, "second": second, "test": test}


SCORED = ["good.png", "photo.jpg", "one_pixel.png", "cmyk.jpg", "sixteen_bit.png"]
FAILED = ["oversized.png", "truncated.png", "notes.txt"]


def test_mixed_run_gives_one_row_per_file_and_reports_failures(runs):
    root, result = runs
    mixed = result["mixed"]
    assert mixed.returncode == 0, mixed.stderr
    rows = _rows(root / "mixed.csv")
    assert sorted(rows) == sorted(SCORED + FAILED + ["corrupt.jpg"])
    assert list(next(iter(rows.values()))) == [
        "path", "width", "height", "score_base", "score_a1", "score_a2", "verdict_a1", "error"
    ]
    for name in SCORED:
        assert rows[name]["error"] == ""
        assert all(0 <= float(rows[name][f"score_{c}"]) <= 1 for c in ("base", "a1", "a2"))
    assert (rows["one_pixel.png"]["width"], rows["one_pixel.png"]["height"]) == ("1", "1")
    for name in FAILED:
        assert rows[name]["error"] and rows[name]["score_base"] == "" and rows[name]["score_a1"] == ""
    assert "decompression bomb" in rows["oversized.png"]["error"]
    corrupt = rows["corrupt.jpg"]
    assert bool(corrupt["error"]) != bool(corrupt["score_base"])  # decoded as garbage or refused: either way a row
    n_failed = sum(bool(row["error"]) for row in rows.values())
    assert f"{len(rows) - n_failed} of {len(rows)} image(s); {n_failed} failed" in mixed.stderr
    for name in FAILED:
        assert name in mixed.stderr


def test_verdicts_follow_the_calibrated_threshold(runs):
    root, _ = runs
    rows = _rows(root / "mixed.csv")
    for name in SCORED:
        expected = "ai-generated" if float(rows[name]["score_a1"]) >= 0.5 else "real"
        assert rows[name]["verdict_a1"] == expected
    assert {rows[name]["verdict_a1"] for name in SCORED} == {"ai-generated", "real"}  # the check is not vacuous


def test_adapter_alone_by_hub_id_scores_like_the_mixed_batch(runs):
    root, result = runs
    assert result["second"].returncode == 0, result["second"].stderr
    mixed, second = _rows(root / "mixed.csv"), _rows(root / "second.csv")
    assert list(second["good.png"]) == ["path", "width", "height", "score_base", "score_second-adapter", "error"]
    for name in SCORED:  # the Hub id loaded from the offline cache; the glob and the folder found every image
        assert abs(float(second[name]["score_second-adapter"]) - float(mixed[name]["score_a2"])) <= TOLERANCE
        assert abs(float(second[name]["score_base"]) - float(mixed[name]["score_base"])) <= TOLERANCE
    # the adapters really change the scores, so the comparisons can tell them apart
    assert max(abs(float(mixed[n]["score_a1"]) - float(mixed[n]["score_a2"])) for n in SCORED) > 1e-3
    assert max(abs(float(mixed[n]["score_a1"]) - float(mixed[n]["score_base"])) for n in SCORED) > 1e-3


def test_heatmaps_cover_each_image_for_each_model(runs):
    root, _ = runs
    scored = [row for row in _rows(root / "mixed.csv").values() if not row["error"]]
    files = sorted(p.name for p in (root / "heatmaps").iterdir())
    assert len(files) == 2 * 3 * len(scored)  # overlay + mask, for base and both adapters
    for name, (width, height) in {"good": (90, 70), "one_pixel": (1, 1), "sixteen_bit": (52, 36)}.items():
        for column in ("base", "a1", "a2"):
            mask_name = next(f for f in files if f.endswith(f"_{name}.{column}.mask.png"))
            mask = Image.open(root / "heatmaps" / mask_name)
            overlay = Image.open(root / "heatmaps" / mask_name.replace(".mask.", ".overlay."))
            assert mask.mode == "I;16" and mask.size == overlay.size == (width, height)
            assert np.asarray(mask).max() == 65535  # the most attended patch is white


def test_test_subcommand_scores_the_adapter_alone_and_reports_metrics_per_split_and_generator(runs):
    root, result = runs
    test = result["test"]
    assert test.returncode == 0, test.stderr
    with open(root / "test_out" / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 7
    mixed = _rows(root / "mixed.csv")
    for row in predictions:
        name = row["image"].rsplit("/", 1)[-1]
        if name == "truncated.png":
            assert row["error"] and row["score"] == ""
            continue
        assert abs(float(row["score"]) - float(mixed[name]["score_a1"])) <= TOLERANCE  # alone == mixed batch
        assert row["prediction"] == str(int(float(row["score"]) >= 0.5))
    report = json.loads((root / "test_out" / "metrics.json").read_text())
    assert report["threshold"] == 0.5  # the adapter's calibrated threshold
    groups = {(g["split"], g["generator"]): g for g in report["groups"]}
    assert set(groups) == {("test", None), ("test", "alpha"), ("test", "beta"), ("val", None), ("val", "alpha")}
    assert groups[("test", "beta")]["num_failed"] == 1
    scored = [r for r in predictions if r["split"] == "test" and r["score"]]
    expected = compute_detection_metrics([float(r["score"]) for r in scored], [int(r["label"]) for r in scored], 0.5)
    for key in ("roc_auc", "accuracy_at_threshold", "num_samples"):
        assert math.isclose(groups[("test", None)]["metrics"][key], expected[key], abs_tol=1e-5)
    table = test.stdout
    assert "split" in table and "alpha" in table and "beta" in table and "(all)" in table
    assert "truncated.png" in test.stderr
