"""Tests for spai_hf.make_csv / scripts/create_true_fake_csv.py."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spai_hf.make_csv import MakeCsvError, main, make_csv, parse_split

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, count: int, prefix: str, nested: bool = True) -> list[Path]:
    paths = []
    for index in range(count):
        sub = folder / (f"part{index % 2}" if nested else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{prefix}{index:03d}.png"
        Image.fromarray(np.full((4, 4, 3), index, np.uint8)).save(path)
        paths.append(path)
    return paths


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_balances_splits_and_writes_relative_paths(tmp_path):
    _images(tmp_path / "real", 50, "r")
    _images(tmp_path / "fake", 20, "f")
    out = tmp_path / "out" / "data.csv"
    result = make_csv([tmp_path / "real"], [tmp_path / "fake"], out, seed=3)
    rows = _read(out)
    assert list(rows[0]) == ["image", "split", "class"]
    by_class = Counter(row["class"] for row in rows)
    assert by_class == {"0": 20, "1": 20}
    per_split = Counter((row["split"], row["class"]) for row in rows)
    assert per_split == {("train", "0"): 16, ("train", "1"): 16, ("val", "0"): 2, ("val", "1"): 2,
                         ("test", "0"): 2, ("test", "1"): 2}
    assert result.counts[("train", 1)] == 16
    for row in rows:  # relative to the CSV's folder, and resolvable from there
        assert not Path(row["image"]).is_absolute() and row["image"].startswith("../")
        assert (out.parent / row["image"]).is_file()
    assert len({row["image"] for row in rows}) == 40
    assert not list(out.parent.glob(".*tmp")), "temporary file left behind"


def test_seed_reproducible_and_changes_selection(tmp_path):
    _images(tmp_path / "real", 30, "r")
    _images(tmp_path / "fake", 10, "f")
    args = ([tmp_path / "real"], [tmp_path / "fake"])
    make_csv(*args, tmp_path / "a.csv", seed=1)
    make_csv(*args, tmp_path / "b.csv", seed=1)
    make_csv(*args, tmp_path / "c.csv", seed=2)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert (tmp_path / "a.csv").read_text() != (tmp_path / "c.csv").read_text()


def test_root_absolute_and_generator_column(tmp_path):
    _images(tmp_path / "real", 6, "r", nested=False)
    _images(tmp_path / "fake", 6, "f", nested=False)
    make_csv([tmp_path / "real"], [tmp_path / "fake"], tmp_path / "o" / "rel.csv", root=tmp_path, generator="sd15")
    rows = _read(tmp_path / "o" / "rel.csv")
    assert {row["generator"] for row in rows} == {"sd15"}
    assert {row["image"].split("/")[0] for row in rows} == {"real", "fake"}
    assert {row["image"].split("/")[0] for row in rows if row["class"] == "1"} == {"fake"}
    make_csv([tmp_path / "real"], [tmp_path / "fake"], tmp_path / "abs.csv", absolute=True)
    assert all(Path(row["image"]).is_absolute() for row in _read(tmp_path / "abs.csv"))
    with pytest.raises(MakeCsvError, match="either --root or --absolute"):
        make_csv([tmp_path / "real"], [tmp_path / "fake"], tmp_path / "x.csv", root=tmp_path, absolute=True)


def test_fewer_reals_warns_and_uses_all(tmp_path, caplog):
    _images(tmp_path / "real", 4, "r")
    _images(tmp_path / "fake", 10, "f")
    with caplog.at_level(logging.WARNING):
        make_csv([tmp_path / "real"], [tmp_path / "fake"], tmp_path / "d.csv")
    assert "only 4 readable real images for 10" in caplog.text
    assert Counter(row["class"] for row in _read(tmp_path / "d.csv")) == {"0": 4, "1": 10}


def test_unreadable_files_listed_and_skipped_and_replaced(tmp_path, caplog):
    _images(tmp_path / "real", 12, "r")
    _images(tmp_path / "fake", 5, "f")
    (tmp_path / "fake" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "real" / "part0" / "broken_real.jpg").write_text("nope")
    with caplog.at_level(logging.WARNING):
        result = make_csv([tmp_path / "real"], [tmp_path / "fake"], tmp_path / "d.csv", seed=0, check="full")
    rows = _read(tmp_path / "d.csv")
    assert "broken.png" in caplog.text and "skipping unreadable" in caplog.text
    assert any(path.name == "broken.png" for path, _ in result.unreadable)
    assert not any("broken" in row["image"] for row in rows)
    assert Counter(row["class"] for row in rows) == {"0": 5, "1": 5}


def test_overlapping_folders_keep_fakes_out_of_reals(tmp_path, caplog):
    _images(tmp_path / "data" / "real", 8, "r")
    _images(tmp_path / "data" / "fake", 4, "f")
    with caplog.at_level(logging.WARNING):
        make_csv([tmp_path / "data"], [tmp_path / "data" / "fake"], tmp_path / "d.csv")
    assert "treated as fake only" in caplog.text
    reals = [row["image"] for row in _read(tmp_path / "d.csv") if row["class"] == "0"]
    assert len(reals) == 4 and not any("/fake/" in path for path in reals)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    _images(tmp_path / "real", 3, "r")
    with pytest.raises(MakeCsvError, match="no AI-generated"):
        make_csv([tmp_path / "real"], [tmp_path / "empty"], tmp_path / "d.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_csv([tmp_path / "real"], [tmp_path / "missing"], tmp_path / "d.csv")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("garbage")
    with pytest.raises(MakeCsvError, match="none of the 1 AI-generated images could be read"):
        make_csv([tmp_path / "real"], [tmp_path / "bad"], tmp_path / "d.csv")
    assert not (tmp_path / "d.csv").exists()


@pytest.mark.parametrize("text", ["0.8,0.2", "0.5,0.5,0.5", "a,b,c", "1.2,-0.1,-0.1"])
def test_bad_split_rejected(text):
    with pytest.raises(MakeCsvError):
        parse_split(text)


def test_main_reports_errors_and_script_runs(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    assert main(["--real", str(tmp_path / "empty"), "--fake", str(tmp_path / "empty"), "--output",
                 str(tmp_path / "x.csv")]) == 1
    assert "no AI-generated" in caplog.text
    _images(tmp_path / "real", 10, "r")
    _images(tmp_path / "fake", 10, "f")
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "create_true_fake_csv.py"), "--real", str(tmp_path / "real"),
         "--fake", str(tmp_path / "fake"), "--output", str(tmp_path / "s.csv"), "--split", "0.6,0.2,0.2",
         "--generator", "g", "--seed", "5"],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "wrote 20 rows" in completed.stderr
    rows = _read(tmp_path / "s.csv")
    assert Counter(row["split"] for row in rows) == {"train": 12, "val": 4, "test": 4}
