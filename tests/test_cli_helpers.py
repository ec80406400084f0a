"""In-process checks of the pieces behind `spai-svd infer`: input expansion, the predictions CSV, heatmaps."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from spai_hf.heatmaps import attention_mask, save_heatmap
from spai_hf.inference import ImageResult, ScoreColumn, collect_inputs, write_predictions


def _touch_images(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / name)
    return [root / name for name in names]


def test_collect_inputs_expands_folders_globs_and_csvs(tmp_path):
    a, b, c = _touch_images(tmp_path, "pics/a.png", "pics/deep/b.jpg", "other/c.png")
    (tmp_path / "pics" / "notes.txt").write_text("skipped when scanning a folder")
    listing = tmp_path / "list.csv"
    listing.write_text("image,split,class\nother/c.png,test,0\npics/a.png,test,1\n")
    found = collect_inputs([str(tmp_path / "pics"), str(tmp_path / "other" / "*.png"), str(listing)])
    assert found == [a, b, c]  # order kept, duplicates dropped
    relocated = tmp_path / "elsewhere.csv"
    relocated.write_text("path\nc.png\n")
    assert collect_inputs([str(relocated)], csv_root=tmp_path / "other") == [c]
    assert collect_inputs([str(tmp_path / "**" / "*.jpg")]) == [b]


def test_collect_inputs_keeps_missing_files_and_rejects_empty_patterns(tmp_path):
    missing = tmp_path / "gone.png"
    assert collect_inputs([str(missing)]) == [missing]  # becomes an error row, not a crash
    with pytest.raises(ValueError, match="no file matches"):
        collect_inputs([str(tmp_path / "*.webp")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        collect_inputs([str(tmp_path / "empty")])
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,label\nx.png,1\n")
    with pytest.raises(ValueError, match="no image or path column"):
        collect_inputs([str(bad_csv)])


def test_predictions_csv_columns_and_verdicts(tmp_path):
    columns = [ScoreColumn("base", "__base__"), ScoreColumn("sdxl", "adapter_0", 0.3), ScoreColumn("flux", "adapter_1")]
    results = [
        ImageResult("a.png", 10, 20, {"base": 0.1, "sdxl": 0.3, "flux": 0.9}),
        ImageResult("b.png", 5, 5, {"base": 0.2, "sdxl": 0.2999999, "flux": 0.1}),
        ImageResult("c.png", error="corrupt or truncated image data"),
    ]
    out = tmp_path / "out" / "p.csv"
    write_predictions(out, results, columns)
    with open(out, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["path", "width", "height", "score_base", "score_sdxl", "score_flux",
                                 "verdict_sdxl", "error"]
    assert [row["verdict_sdxl"] for row in rows] == ["ai-generated", "real", ""]  # score >= threshold
    assert rows[0]["score_flux"] == "0.900000" and rows[2]["score_base"] == "" and rows[2]["width"] == ""
    assert rows[2]["error"] == "corrupt or truncated image data"
    assert [p.name for p in out.parent.iterdir()] == ["p.csv"]  # no temporary file left behind


def test_attention_mask_paints_patch_weights():
    boxes = [(0, 0, 4), (0, 4, 4), (4, 0, 4), (4, 4, 4)]
    mask = attention_mask((9, 10), boxes, [0.1, 0.2, 0.3, 0.4])
    assert mask.shape == (9, 10) and mask.dtype == np.float32
    assert mask[0, 0] == pytest.approx(0.1) and mask[7, 7] == pytest.approx(0.4)
    assert np.all(mask[8, :] == 0) and np.all(mask[:, 8:] == 0)  # past the last full patch: not looked at


def test_attention_mask_averages_overlapping_crops_and_clips_padding():
    # five-crop layout of a padded 6 x 6 image (patch 4): boxes may start before the image (negative offsets)
    mask = attention_mask((6, 6), [(0, 0, 4), (0, 2, 4), (-1, -1, 4)], [0.5, 0.25, 0.25])
    assert mask[0, 0] == pytest.approx((0.5 + 0.25) / 2)
    assert mask[0, 3] == pytest.approx((0.5 + 0.25) / 2) and mask[0, 5] == pytest.approx(0.25)
    assert mask[5, 5] == 0
    with pytest.raises(ValueError, match="2 patch boxes but 1"):
        attention_mask((6, 6), [(0, 0, 4), (0, 2, 4)], [1.0])


def test_save_heatmap_writes_mask_and_overlay(tmp_path):
    image = Image.new("RGB", (8, 6), (0, 0, 255))
    overlay_path, mask_path = save_heatmap(image, [(0, 0, 4), (0, 4, 4)], [0.25, 0.75], tmp_path / "img.base")
    assert (overlay_path.name, mask_path.name) == ("img.base.overlay.png", "img.base.mask.png")
    mask = np.asarray(Image.open(mask_path))
    assert mask[0, 0] == round(65535 / 3) and mask[0, 7] == 65535 and mask[5, 0] == 0
    overlay = np.asarray(Image.open(overlay_path))
    assert overlay.shape == (6, 8, 3)
    assert (overlay[5, 0] == (0, 0, 255)).all()  # uncovered pixels keep the image
    assert not (overlay[0, 7] == (0, 0, 255)).all()  # attended pixels are tinted
