"""Tests for spai_hf.image_io: RGB conversion as the original, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spai_hf.image_io import IMAGE_EXTENSIONS, ImageLoadError, check_image, find_images, load_image


def _rgb_array(height: int = 20, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_rgb_png_round_trips_exactly(tmp_path):
    pixels = _rgb_array()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(loaded), pixels)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "1"])
def test_modes_match_original_convert(tmp_path, mode):
    """Every 8-bit mode gives exactly what `Image.open(path).convert("RGB")` gives (alpha dropped, no compositing)."""
    source = Image.fromarray(_rgb_array()).convert(mode)
    suffix = ".tif" if mode == "CMYK" else ".png"
    path = tmp_path / f"img{suffix}"
    source.save(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(loaded), expected)


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent: compositing on white/black would change the red channel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert np.all(np.asarray(load_image(tmp_path / "t.png"))[..., 0] == 200)


def test_exif_orientation_is_not_applied(tmp_path):
    pixels = _rgb_array(10, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" orientation tag
    Image.fromarray(pixels).save(tmp_path / "o.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "o.jpg").size == (30, 10)


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    loaded = np.asarray(load_image(tmp_path / "deep.png"))
    expected = np.rint(values / 257.0).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], expected)
    # The original's plain convert clips: most pixels saturate. Ours keeps the full range.
    assert loaded.min() == 0 and loaded.max() == 255 and len(np.unique(loaded)) > 100


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file") as info:
        load_image(tmp_path / "nope.png")
    assert info.value.path.endswith("nope.png")


def test_not_an_image(tmp_path):
    (tmp_path / "fake.png").write_text("this is text")
    with pytest.raises(ImageLoadError, match="unrecognised"):
        load_image(tmp_path / "fake.png")


def test_truncated_file_detected(tmp_path):
    Image.fromarray(_rgb_array(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(tmp_path / "cut.png")


def test_decompression_bomb_refused(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(tmp_path / "big.png", max_pixels=100 * 99)
    assert load_image(tmp_path / "big.png", max_pixels=100 * 100).size == (100, 100)
    assert load_image(tmp_path / "big.png", max_pixels=None).size == (100, 100)


def test_find_images_recursive_sorted_and_filtered(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ["b.PNG", "a.jpg", "sub/c.webp", "sub/deeper/d.jpeg", ".hidden/e.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    found = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.jpeg"]
    assert [p.name for p in find_images([tmp_path], recursive=False)] == ["a.jpg", "b.PNG"]
    assert ".png" in IMAGE_EXTENSIONS


def test_find_images_bad_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_images(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        find_images(tmp_path / "file.png")


def test_check_image_header_and_full(tmp_path):
    Image.fromarray(_rgb_array(64, 64)).save(tmp_path / "ok.png")
    check_image(tmp_path / "ok.png")
    check_image(tmp_path / "ok.png", decode=True)
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for decode in (False, True):
        with pytest.raises(ImageLoadError):
            check_image(tmp_path / "cut.png", decode=decode)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageLoadError, match="unrecognised"):
        check_image(tmp_path / "text.jpg")
