"""The offline demo dataset: reproducible bytes, splits by source photograph, the training CSV format, and a
spectral baseline that separates full-strength fakes (so the generators really leave a trace)."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from spai_hf.data import load_split
from spai_hf.demo_data import (
    CSV_COLUMNS,
    PHOTO_SOURCES,
    REAL,
    DemoDataConfig,
    build_demo_data,
    dataset_digest,
    generate_demo_data,
    load_source_photos,
    main,
)
from spai_hf.spectral_baseline import SpectralBaseline, cross_generator_auc, spectrum_features

SMALL = dict(crop_size=32, crops_per_source=4, deconv_steps=5, autoencoder_steps=5, fit_crop=32, fit_batch=4)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    build_demo_data(out, DemoDataConfig(**SMALL, seed=3))
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "demo.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_same_seed_same_bytes_other_seed_differs(small_dir, tmp_path):
    again = tmp_path / "again"
    build_demo_data(again, DemoDataConfig(**SMALL, seed=3))
    assert dataset_digest(again) == dataset_digest(small_dir)
    other = tmp_path / "other"
    build_demo_data(other, DemoDataConfig(**SMALL, seed=4))
    assert dataset_digest(other) != dataset_digest(small_dir)


def test_csv_is_the_training_format(small_dir):
    with open(small_dir / "demo.csv", newline="") as file:
        assert tuple(next(csv.reader(file))) == CSV_COLUMNS
    rows = _rows(small_dir)
    config = DemoDataConfig(**SMALL)
    n_photos = len(PHOTO_SOURCES)
    for generator in config.generators:
        mine = [r for r in rows if r["generator"] == generator]
        # one balanced set per generator: every real crop once, and its own fakes
        assert sum(r["class"] == "0" for r in mine) == sum(r["class"] == "1" for r in mine) == 4 * n_photos
        assert all(r["image"].startswith(f"{generator}/") for r in mine if r["class"] == "1")
        assert all(r["image"].startswith(f"{REAL}/") for r in mine if r["class"] == "0")
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert not list(small_dir.rglob("*.tmp"))
    # the training library accepts it, split by split and generator by generator
    for split in ("train", "val", "test"):
        table = load_split(small_dir / "demo.csv", split, generator="deconv")
        assert set(table["label"]) == {0, 1}


def test_reals_are_unresized_crops_and_files_hold_the_arrays(small_dir):
    data = generate_demo_data(DemoDataConfig(**SMALL, seed=3))
    photos = load_source_photos()
    size = SMALL["crop_size"]
    for index in np.flatnonzero(data.labels == 0):
        top, left, flip = data.positions[index]
        crop = photos[data.sources[index]][top : top + size, left : left + size]
        assert np.array_equal(data.images[index], crop[:, ::-1] if flip else crop)
    for index in range(0, len(data.labels), 5):
        path = small_dir / f"{data.generators[index]}/{data.sources[index]}_{data.crop_ids[index]:04d}.png"
        assert np.array_equal(np.asarray(Image.open(path)), data.images[index])


def test_no_source_photo_in_two_splits(small_dir):
    split_of: dict[str, set[str]] = {}
    for row in _rows(small_dir):
        source = Path(row["image"]).stem.rsplit("_", 1)[0]
        split_of.setdefault(source, set()).add(row["split"])
    assert set(split_of) == {s.name for s in PHOTO_SOURCES}
    assert all(len(splits) == 1 for splits in split_of.values()), split_of


def test_blend_dial_moves_fakes_towards_their_source():
    config = dict(SMALL, generators=("bilinear",), crops_per_source=3)
    full = generate_demo_data(DemoDataConfig(**config, blend=1.0))
    light = generate_demo_data(DemoDataConfig(**config, blend={"bilinear": 0.25}))
    real = full.labels == 0
    assert np.array_equal(full.images[real], light.images[real])
    distance = lambda data: np.abs(data.images[~real].astype(float) - data.images[real].astype(float)).mean()  # noqa: E731
    assert 0 < distance(light) < 0.4 * distance(full)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(generators=("gan",)), "unknown generator"),
        (dict(blend=0.0), "blend weight"),
        (dict(blend={"stylegan": 0.5}), "not built"),
        (dict(crop_size=4), "crop_size"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DemoDataConfig(**kwargs)


def test_cli_writes_dataset_and_refuses_bad_flags(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--crop-size", "16", "--crops-per-source", "2", "--generators", "bilinear"]) == 0
    assert "train" in capsys.readouterr().out
    assert len(_rows(tmp_path / "cli")) == 2 * 2 * len(PHOTO_SOURCES)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--generators", "nope"])
    assert not (tmp_path / "bad").exists()


def test_spectral_baseline_separates_full_strength_fakes(tmp_path):
    out = tmp_path / "baseline"
    build_demo_data(out, DemoDataConfig(crop_size=32, crops_per_source=16, generators=("bilinear", "deconv"),
                                        deconv_steps=30, fit_crop=32))
    table = cross_generator_auc(out / "demo.csv", ["bilinear", "deconv"])
    assert table["bilinear"]["bilinear"] > 0.85
    assert table["deconv"]["deconv"] > 0.9


def test_spectral_baseline_rejects_bad_input():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    assert spectrum_features(images).shape == (8, 16 * 9)
    with pytest.raises(RuntimeError):
        SpectralBaseline().score(images)
    with pytest.raises(ValueError, match="both"):
        SpectralBaseline().fit(images, np.zeros(8))
    detector = SpectralBaseline().fit(images, np.arange(8) % 2)
    with pytest.raises(ValueError, match="fitted on crops"):
        detector.score(images[:, :8, :8])
    assert roc_auc_score(np.arange(8) % 2, detector.score(images)) > 0.5  # it fits its own training data
