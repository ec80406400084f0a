"""Build a training CSV (``image,split,class[,generator]``) from folders of real and AI-generated images.

Class 0 = real, 1 = AI-generated. Every fake image found is used; as many real images as there are fakes are drawn
at random (seeded), or all of them with a warning when there are fewer. Each class is shuffled and cut into
train / val / test by the split fractions separately, so every split keeps the real/fake balance. Paths are written
relative to ``--root`` (default: the CSV's folder) or absolute.

The optional ``generator`` column holds the given name on every row, real rows included: it names the balanced
real-vs-generator set the row belongs to, so CSVs made for several generators can be concatenated and
``spai-svd train --generator NAME`` selects one balanced set by this column.

Unreadable files are listed and skipped; unreadable real images are replaced by other real images when available.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_open
from .image_io import ImageLoadError, check_image, find_images

__all__ = ["SPLIT_NAMES", "MakeCsvError", "MakeCsvResult", "build_parser", "main", "make_csv", "parse_split"]

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
CHECK_MODES = ("header", "full", "none")


class MakeCsvError(ValueError):
    """The inputs cannot give a usable CSV (no images, bad split, ...)."""


@dataclass
class MakeCsvResult:
    """What was written: row counts per (split, class) and the files skipped as unreadable (path, reason)."""

    output: Path
    counts: dict[tuple[str, int], int]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def parse_split(text: str) -> tuple[float, float, float]:
    """Parse ``"0.8,0.1,0.1"`` into train/val/test fractions (non-negative, summing to 1)."""
    try:
        parts = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise MakeCsvError(f"--split must be three comma-separated numbers, got {text!r}") from None
    return _check_split(parts)


def _check_split(parts: Sequence[float]) -> tuple[float, float, float]:
    if len(parts) != 3 or any(part < 0 for part in parts) or abs(sum(parts) - 1) > 1e-6:
        raise MakeCsvError(f"the split needs three non-negative fractions summing to 1 (train,val,test), got {parts}")
    return tuple(parts)  # type: ignore[return-value]


def _readable(paths: Sequence[Path], check: str, workers: int, wanted: int | None = None):
    """Yield ``(path, reason_or_None)`` in order, checking up to ``wanted`` readable files (all if None)."""
    if check == "none":
        yield from ((path, None) for path in paths[:wanted])
        return

    def reason(path: Path) -> str | None:
        try:
            check_image(path, decode=check == "full")
        except ImageLoadError as error:
            return error.reason
        return None

    found = 0
    batch = max(1, workers) * 16
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            for path, problem in zip(chunk, pool.map(reason, chunk)):
                if wanted is not None and found >= wanted:
                    return
                found += problem is None
                yield path, problem


def _keep_readable(checked: Iterable[tuple[Path, str | None]], unreadable: list[tuple[Path, str]]) -> list[Path]:
    """Split checked paths into the readable ones (returned) and the unreadable ones (appended with reasons)."""
    readable = []
    for path, problem in checked:
        if problem is None:
            readable.append(path)
        else:
            unreadable.append((path, problem))
    return readable


def _split_counts(total: int, fractions: Sequence[float]) -> list[int]:
    """Cut ``total`` items by cumulative rounding so the parts add up exactly."""
    bounds, cumulative = [0], 0.0
    for fraction in fractions:
        cumulative += fraction
        bounds.append(round(cumulative * total))
    bounds[-1] = total
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _collect(dirs: Iterable[str | os.PathLike], what: str) -> list[Path]:
    paths = find_images(list(dirs))
    if not paths:
        folders = ", ".join(map(str, dirs))
        raise MakeCsvError(f"no {what} images found in {folders} (looked recursively for image suffixes)")
    return paths


def _format_path(path: Path, root: Path | None) -> str:
    absolute = path.resolve()
    return absolute.as_posix() if root is None else Path(os.path.relpath(absolute, root.resolve())).as_posix()


def _write_atomic(output: Path, header: list[str], rows: list[list[str]]) -> None:
    with atomic_open(output, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_csv(
    real_dirs: Sequence[str | os.PathLike],
    fake_dirs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    root: str | os.PathLike | None = None,
    absolute: bool = False,
    generator: str | None = None,
    seed: int = 0,
    check: str = "header",
    workers: int = 4,
) -> MakeCsvResult:
    """Scan the folders, balance, split and write the CSV atomically; see the module docstring for the rules.

    ``check`` is how each used file is verified: ``"header"`` (fast structural check), ``"full"`` (decode every
    pixel) or ``"none"``. ``root`` and ``absolute`` are exclusive; with neither, paths are relative to the CSV's folder.
    """
    if absolute and root is not None:
        raise MakeCsvError("use either --root or --absolute, not both")
    if check not in CHECK_MODES:
        raise MakeCsvError(f"check must be one of {CHECK_MODES}, got {check!r}")
    split = _check_split(split)
    output = Path(output)
    base = None if absolute else Path(root) if root is not None else output.parent

    fakes = _collect(fake_dirs, "AI-generated (--fake)")
    reals = _collect(real_dirs, "real (--real)")
    overlap = set(fakes) & set(reals)
    if overlap:
        logger.warning("%d files found under both --real and --fake folders are treated as fake only", len(overlap))
        reals = [path for path in reals if path not in overlap]

    rng = random.Random(seed)
    unreadable: list[tuple[Path, str]] = []
    fake_ok = _keep_readable(_readable(fakes, check, workers), unreadable)
    if not fake_ok:
        raise MakeCsvError(f"none of the {len(fakes)} AI-generated images could be read")
    shuffled_reals = reals[:]
    rng.shuffle(shuffled_reals)
    real_ok = _keep_readable(_readable(shuffled_reals, check, workers, wanted=len(fake_ok)), unreadable)
    if not real_ok:
        raise MakeCsvError(f"none of the {len(reals)} real images could be read")
    for path, problem in unreadable:
        logger.warning("skipping unreadable image %s: %s", path, problem)
    if len(real_ok) < len(fake_ok):
        logger.warning(
            "only %d readable real images for %d AI-generated ones: using all real images, the set is unbalanced",
            len(real_ok),
            len(fake_ok),
        )

    rows: list[list[str]] = []
    counts: dict[tuple[str, int], int] = {}
    per_split: dict[str, list[list[str]]] = {name: [] for name in SPLIT_NAMES}
    for label, paths in ((0, real_ok), (1, fake_ok)):
        paths = sorted(paths)
        rng.shuffle(paths)
        start = 0
        for name, count in zip(SPLIT_NAMES, _split_counts(len(paths), split)):
            for path in paths[start : start + count]:
                row = [_format_path(path, base), name, str(label)]
                per_split[name].append(row + ([generator] if generator is not None else []))
            counts[(name, label)] = count
            start += count
    for name, fraction in zip(SPLIT_NAMES, split):
        if fraction > 0 and not per_split[name]:
            logger.warning("split %r is empty: too few images for fraction %g", name, fraction)
        rows.extend(per_split[name])

    header = ["image", "split", "class"] + (["generator"] if generator is not None else [])
    _write_atomic(output, header, rows)
    summary = ", ".join(f"{name}: {counts[(name, 0)]} real + {counts[(name, 1)]} fake" for name in SPLIT_NAMES)
    logger.info(f"wrote {len(rows)} rows to {output} ({summary}); {len(unreadable)} unreadable files skipped")
    return MakeCsvResult(output=output, counts=counts, unreadable=unreadable)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Argument parser of ``create_true_fake_csv.py`` / ``spai-svd make-csv``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", nargs="+", required=True, metavar="DIR", help="folders of real images (recursive)")
    parser.add_argument("--fake", nargs="+", required=True, metavar="DIR", help="folders of AI-generated images")
    parser.add_argument("--output", required=True, metavar="CSV", help="CSV file to write")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--root", metavar="DIR", help="write paths relative to DIR (default: the CSV's folder)")
    where.add_argument("--absolute", action="store_true", help="write absolute paths")
    parser.add_argument("--generator", metavar="NAME", help="add a generator column with NAME on every row")
    parser.add_argument("--seed", type=int, default=0, help="seed for picking real images and splitting (default 0)")
    parser.add_argument(
        "--check", choices=CHECK_MODES, default="header",
        help="how to verify each used image: header (fast, default), full (decode all pixels), none",
    )
    parser.add_argument("--workers", type=int, default=4, help="threads for checking images (default 4)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 on bad input)."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        make_csv(
            args.real, args.fake, args.output, split=parse_split(args.split), root=args.root,
            absolute=args.absolute, generator=args.generator, seed=args.seed, check=args.check, workers=args.workers,
        )
    except (MakeCsvError, FileNotFoundError, NotADirectoryError) as error:
        logger.error("%s", error)
        return 1
    return 0
