"""Tests for spai_hf.data: CSV validation with row-level errors, lazy decoding, training augmentations, collators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spai_hf.data import (
    AugmentationConfig,
    CsvValidationError,
    TrainTransform,
    augment_image,
    collate,
    eval_dataset,
    load_split,
    paired_split,
    train_dataset,
)
from spai_hf.image_io import ImageLoadError
from spai_hf.image_processing_spai import SpaiImageProcessor

S = 32


def _write_csv(path: Path, rows: list[str], header: str = "image,split,class") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def image_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for index, (height, width) in enumerate([(40, 50), (20, 70), (64, 64), (33, 45), (50, 20), (36, 36)]):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def test_load_split_selects_and_resolves(tmp_path, image_dir):
    csv_path = _write_csv(
        tmp_path / "d.csv",
        ["imgs/0.png,train,0", "imgs/1.png,val,1", "imgs/2.png,train,1", "imgs/3.png,test,0"],
    )
    train = load_split(csv_path, "train")
    assert train["label"] == [0, 1]
    assert train["line"] == [2, 4]
    assert train["image"] == [str((image_dir / "0.png").resolve()), str((image_dir / "2.png").resolve())]
    # Paths relative to another root.
    other = tmp_path / "elsewhere"
    other.mkdir()
    _write_csv(other / "d.csv", ["0.png,val,1"])
    assert load_split(other / "d.csv", "val", root=image_dir)["image"] == [str((image_dir / "0.png").resolve())]


def test_generator_column_filters(tmp_path, image_dir):
    csv_path = _write_csv(
        tmp_path / "d.csv",
        ["imgs/0.png,train,0,sd", "imgs/1.png,train,1,sd", "imgs/2.png,train,1,mj", "imgs/3.png,train,0,mj"],
        header="image,split,class,generator",
    )
    assert load_split(csv_path, "train", generator="mj")["line"] == [4, 5]
    assert len(load_split(csv_path, "train")) == 4
    with pytest.raises(CsvValidationError, match="generators present: mj, sd"):
        load_split(csv_path, "train", generator="dalle")


def test_missing_column_named(tmp_path):
    csv_path = _write_csv(tmp_path / "d.csv", ["a.png,0"], header="image,class")
    with pytest.raises(CsvValidationError, match="missing column.*split"):
        load_split(csv_path, "train")


def test_bad_label_and_missing_file_name_their_lines(tmp_path, image_dir):
    csv_path = _write_csv(
        tmp_path / "d.csv",
        ["imgs/0.png,train,0", "imgs/1.png,train,2", "imgs/nope.png,train,1", "imgs/2.png,val,7", "imgs/3.png,train,x"],
    )
    with pytest.raises(CsvValidationError) as info:
        load_split(csv_path, "train")
    message = str(info.value)
    assert "3 bad row(s)" in message
    assert "line 3: class must be 0 (real) or 1 (AI-generated), got '2'" in message
    assert "line 4: file not found" in message and "nope.png" in message
    assert "line 6: class must be 0" in message
    assert "line 5" not in message  # the val row is not part of this split
    assert [line for line, _ in info.value.problems] == [3, 4, 6]


def test_empty_split_lists_present_splits(tmp_path, image_dir):
    csv_path = _write_csv(tmp_path / "d.csv", ["imgs/0.png,train,0", "imgs/1.png,test,1"])
    with pytest.raises(CsvValidationError, match=r"split 'val' has no rows \(splits present: test, train\)"):
        load_split(csv_path, "val")


def test_many_problems_are_capped(tmp_path):
    csv_path = _write_csv(tmp_path / "d.csv", [f"missing{i}.png,train,0" for i in range(25)])
    with pytest.raises(CsvValidationError) as info:
        load_split(csv_path, "train")
    assert len(info.value.problems) == 25
    assert "... and 5 more" in str(info.value)


def test_malformed_csv_is_reported(tmp_path):
    csv_path = _write_csv(tmp_path / "d.csv", ["a.png,train,0", "b.png,train,1,extra,fields"])
    with pytest.raises(CsvValidationError, match="cannot parse the CSV"):
        load_split(csv_path, "train")


def test_empty_and_absent_csv(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CsvValidationError, match="empty"):
        load_split(tmp_path / "empty.csv", "train")
    with pytest.raises(CsvValidationError, match="file not found"):
        load_split(tmp_path / "absent.csv", "train")


def test_images_decoded_lazily(tmp_path, image_dir):
    (image_dir / "broken.png").write_text("not an image")
    csv_path = _write_csv(tmp_path / "d.csv", ["imgs/broken.png,val,1", "imgs/0.png,val,0"])
    split = load_split(csv_path, "val")  # exists, so validation passes without decoding
    dataset = eval_dataset(split, SpaiImageProcessor(patch_size=S))
    assert dataset[1]["pixel_values"].shape == (3, 40, 50)
    with pytest.raises(ImageLoadError, match="broken.png"):
        dataset[0]
    with pytest.raises(CsvValidationError, match="line 2: unrecognised"):
        load_split(csv_path, "val", check_images=True)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_is_window_of_image_and_reproducible():
    pixels = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    processor = SpaiImageProcessor(patch_size=S)
    config = AugmentationConfig(hflip_prob=0, vflip_prob=0)
    crop = augment_image(image, S, config, _gen(3), processor)
    assert crop.shape == (3, S, S) and crop.dtype == torch.float32
    full = processor.to_tensor(image)
    windows = [
        (top, left) for top in range(50 - S + 1) for left in range(70 - S + 1)
        if torch.equal(full[:, top : top + S, left : left + S], crop)
    ]
    assert len(windows) == 1
    assert torch.equal(augment_image(image, S, config, _gen(3), processor), crop)
    assert not torch.equal(augment_image(image, S, config, _gen(4), processor), crop)


def test_small_image_is_padded_like_the_processor():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 40, 3), dtype=np.uint8))
    processor = SpaiImageProcessor(patch_size=S)
    crop = augment_image(image, S, AugmentationConfig(hflip_prob=0, vflip_prob=0), _gen(0), processor)
    full = processor.to_tensor(image)  # height padded centred to 32 with reflect-101
    assert any(torch.equal(full[:, :, left : left + S], crop) for left in range(40 - S + 1))


def test_flips_mirror_the_same_crop():
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 60, 3), dtype=np.uint8))
    processor = SpaiImageProcessor(patch_size=S)
    never = AugmentationConfig(hflip_prob=1e-12, vflip_prob=1e-12)  # draws the same random numbers, never fires
    plain = augment_image(image, S, never, _gen(5), processor)
    assert torch.equal(augment_image(image, S, AugmentationConfig(1.0, 1e-12), _gen(5), processor), plain.flip(-1))
    assert torch.equal(augment_image(image, S, AugmentationConfig(1e-12, 1.0), _gen(5), processor), plain.flip(-2))


@pytest.mark.parametrize("field", ["blur_prob", "jpeg_prob", "noise_prob"])
def test_optional_augmentations_change_pixels_only_when_enabled(field):
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    processor = SpaiImageProcessor(patch_size=S)
    base = AugmentationConfig(hflip_prob=0, vflip_prob=0, noise_std=(0.05, 0.1), blur_sigma=(1.0, 2.0))
    off = augment_image(image, S, base, _gen(6), processor)
    on = augment_image(image, S, AugmentationConfig(**{**base.__dict__, field: 1.0}), _gen(6), processor)
    assert on.shape == off.shape and not torch.equal(on, off)
    assert on.min() >= 0 and on.max() <= 1


def test_augmentation_config_validation():
    with pytest.raises(ValueError, match="blur_prob"):
        AugmentationConfig(blur_prob=1.5)
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentationConfig(jpeg_quality=(50, 120))
    with pytest.raises(ValueError, match="noise_std"):
        AugmentationConfig(noise_std=(0.2, 0.1))


def test_train_transform_seeding_per_row_and_epoch(tmp_path, image_dir):
    csv_path = _write_csv(tmp_path / "d.csv", [f"imgs/{i}.png,train,{i % 2}" for i in range(6)])
    transform = TrainTransform(S, AugmentationConfig(noise_prob=0.5), seed=7)
    dataset = train_dataset(load_split(csv_path, "train"), transform)
    first = [dataset[i]["pixel_values"] for i in range(6)]
    batch = dataset[[4, 1]]  # a row's crop does not depend on which rows share its batch
    assert torch.equal(batch["pixel_values"][0], first[4]) and torch.equal(batch["pixel_values"][1], first[1])
    transform.set_epoch(1)
    assert not torch.equal(dataset[4]["pixel_values"], first[4])
    transform.set_epoch(0)
    assert torch.equal(dataset[4]["pixel_values"], first[4])
    other_seed = train_dataset(load_split(csv_path, "train"), TrainTransform(S, AugmentationConfig(), seed=8))
    assert not torch.equal(other_seed[4]["pixel_values"], first[4])

    collated = collate([dataset[i] for i in range(6)])
    assert list(collated) == ["labels", "pixel_values"]
    assert collated["pixel_values"].shape == (6, 3, S, S)
    assert collated["labels"].tolist() == [0, 1, 0, 1, 0, 1]


def test_collate_keeps_different_sizes_apart(tmp_path, image_dir):
    csv_path = _write_csv(tmp_path / "d.csv", [f"imgs/{i}.png,val,{i % 2}" for i in range(3)])
    dataset = eval_dataset(load_split(csv_path, "val"), SpaiImageProcessor(patch_size=S))
    batch = collate([dataset[i] for i in range(3)])
    assert [tuple(p.shape) for p in batch["pixel_values"]] == [(3, 40, 50), (3, 32, 70), (3, 64, 64)]
    assert batch["labels"].tolist() == [0, 1, 0]


@pytest.fixture
def aligned_dir(tmp_path) -> Path:
    """Three real images of different sizes and, for each, a "fake" that is its negative (so alignment is checkable)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "aligned"
    folder.mkdir()
    for index, (height, width) in enumerate([(40, 50), (64, 48), (36, 36)]):
        real = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(real).save(folder / f"real{index}.png")
        Image.fromarray(255 - real).save(folder / f"fake{index}.png")
    return folder


def test_paired_split_groups_real_first_and_counts_a_shared_real_once(tmp_path, aligned_dir):
    csv_path = _write_csv(
        tmp_path / "d.csv",
        [
            "aligned/fake0.png,train,1,p0", "aligned/real0.png,train,0,p0", "aligned/real0.png,train,0,p0",
            "aligned/real1.png,train,0,p1", "aligned/fake1.png,train,1,p1", "aligned/real2.png,val,0,p2",
        ],
        header="image,split,class,pair",
    )
    split = load_split(csv_path, "train")
    assert split["pair"] == ["p0", "p0", "p0", "p1", "p1"]
    groups = paired_split(split, csv_path)
    assert groups["label"] == [[0, 1], [0, 1]]
    assert [[Path(p).name for p in paths] for paths in groups["image"]] == [
        ["real0.png", "fake0.png"], ["real1.png", "fake1.png"]
    ]


def test_paired_split_names_unpairable_lines(tmp_path, aligned_dir):
    csv_path = _write_csv(
        tmp_path / "d.csv",
        ["aligned/real0.png,train,0,p0", "aligned/fake0.png,train,1,p0", "aligned/real1.png,train,0,p1",
         "aligned/fake2.png,train,1,"],
        header="image,split,class,pair",
    )
    with pytest.raises(CsvValidationError) as error:
        paired_split(load_split(csv_path, "train"), csv_path)
    assert [line for line, _ in error.value.problems] == [4, 5]
    assert "pair 'p1' has no fake" in str(error.value) and "empty pair value" in str(error.value)
    # Without a pair column every row is unpairable.
    plain = _write_csv(tmp_path / "plain.csv", ["aligned/real0.png,train,0", "aligned/fake0.png,train,1"])
    with pytest.raises(CsvValidationError, match="cannot form aligned pairs"):
        paired_split(load_split(plain, "train"), plain)


def test_paired_transform_cuts_and_flips_members_alike(tmp_path, aligned_dir):
    csv_path = _write_csv(
        tmp_path / "d.csv",
        [f"aligned/{kind}{i}.png,train,{label},p{i}" for i in range(3) for kind, label in (("real", 0), ("fake", 1))],
        header="image,split,class,pair",
    )
    transform = TrainTransform(S, AugmentationConfig(), seed=3)
    dataset = train_dataset(paired_split(load_split(csv_path, "train"), csv_path), transform)
    corners = set()
    for index in range(3):
        for epoch in range(4):
            transform.set_epoch(epoch)
            row = dataset[index]
            real, fake = row["pixel_values"]
            assert row["labels"] == [0, 1]
            # The fake is the real's negative: same window and flips <=> the crops add up to 1 everywhere.
            torch.testing.assert_close(real + fake, torch.ones_like(real), atol=1e-6, rtol=0)
            corners.add((index, float(real[0, 0, 0])))
    assert len(corners) > 3  # the window and flips do change between epochs
    batch = collate([dataset[0], dataset[2]])
    assert batch["pixel_values"].shape == (4, 3, S, S)
    assert batch["labels"].tolist() == [0, 1, 0, 1]
