"""Training and evaluation data for SPAI from a CSV (``image,split,class[,generator][,pair]``; 0 = real, 1 =
AI-generated).

`load_split` reads the CSV with `datasets`, keeps one split (and optionally one generator), and validates it up front
(columns, labels, file existence, non-empty) with an error that lists the bad rows by line number. Images are not
opened there: the returned dataset holds path strings, and `train_dataset` / `eval_dataset` attach
`datasets.Dataset.with_transform` transforms that decode each image only when a batch asks for it.

Training transform (SPAI's training inputs are single S x S patches, SPAI_SPEC.md section 8): a random S x S crop
(sides shorter than S are padded centred with reflect-101, as the image processor does), random horizontal and
vertical flips, then optional Gaussian blur, JPEG re-compression and Gaussian noise, each with its own probability.
All randomness comes from a `torch.Generator` seeded by (seed, epoch, row), so a sample's augmentation does not
depend on worker count, process count or resumption. Evaluation feeds whole images at their own resolution through
`SpaiImageProcessor`; `collate` therefore stacks equal-sized images and keeps others in a list.

Aligned pairs (`paired_split`): when fakes are made from real images (reconstructions, re-upsamplings), the optional
``pair`` column gives a real image and the fakes made from it one shared value. Training on such groups -- every
member in the same batch, cut and flipped alike -- leaves the generator's trace as the only difference between
the classes inside a batch, which is what lets a detector trained from scratch find it (the "aligned datasets"
recipe).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.exceptions import DatasetGenerationError
import torch
from PIL import Image, ImageFilter

from .image_io import ImageLoadError, check_image, load_image
from .image_processing_spai import SpaiImageProcessor

__all__ = [
    "REQUIRED_COLUMNS",
    "AugmentationConfig",
    "CsvValidationError",
    "EvalTransform",
    "TrainTransform",
    "augment_image",
    "collate",
    "eval_dataset",
    "load_split",
    "paired_split",
    "train_dataset",
]

REQUIRED_COLUMNS = ("image", "split", "class")
MAX_LISTED_PROBLEMS = 20


class CsvValidationError(ValueError):
    """The CSV cannot be used; ``problems`` holds ``(line, reason)`` for every bad row (line 1 is the header)."""

    def __init__(self, csv_path: str | os.PathLike, summary: str, problems: Sequence[tuple[int, str]] = ()):
        self.csv_path = str(csv_path)
        self.problems = list(problems)
        lines = [f"{self.csv_path}: {summary}"]
        lines += [f"  line {line}: {reason}" for line, reason in self.problems[:MAX_LISTED_PROBLEMS]]
        if len(self.problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__("\n".join(lines))


def _read_csv(csv_path: Path, cache_dir: str | None) -> datasets.Dataset:
    """All columns as strings (no type guessing, empty cells stay ""), via the `datasets` CSV builder."""
    if not csv_path.is_file():
        raise CsvValidationError(csv_path, "file not found")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise CsvValidationError(csv_path, "the file is empty (expected a header line image,split,class)")
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise CsvValidationError(
            csv_path, f"missing column(s) {', '.join(missing)}; the header has {', '.join(header)} "
            f"(required: {', '.join(REQUIRED_COLUMNS)})"
        )
    features = datasets.Features({name: datasets.Value("string") for name in header})
    try:
        return datasets.load_dataset(
            "csv", data_files=str(csv_path), split="train", features=features, na_filter=False, cache_dir=cache_dir
        )
    except DatasetGenerationError as error:
        cause = error.__cause__ or error
        raise CsvValidationError(csv_path, f"cannot parse the CSV ({type(cause).__name__}: {cause})") from None


def _column(table: datasets.Dataset, name: str) -> list[str]:
    return table.data.column(name).to_pylist()


def load_split(
    csv_path: str | os.PathLike,
    split: str,
    root: str | os.PathLike | None = None,
    generator: str | None = None,
    check_files: bool = True,
    check_images: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Rows of one split as a `datasets.Dataset` with columns ``image`` (absolute path), ``label`` (0/1), ``line``
    and ``pair`` (the CSV's ``pair`` value, "" when the CSV has no such column).

    ``root``: folder that relative paths start from (default: the CSV's folder). ``generator``: keep only rows whose
    ``generator`` column equals it (ignored when the CSV has no such column). ``check_files`` tests that each file
    exists; ``check_images`` also opens each header (slower). Raises `CsvValidationError` listing bad rows.
    """
    csv_path = Path(csv_path)
    table = _read_csv(csv_path, cache_dir)
    root = Path(root) if root is not None else csv_path.parent
    splits = _column(table, "split")
    keep = [i for i, value in enumerate(splits) if value.strip() == split]
    if generator is not None and "generator" in table.column_names:
        names = _column(table, "generator")
        keep = [i for i in keep if names[i].strip() == generator]
        if not keep:
            present = sorted({name.strip() for name in names})
            raise CsvValidationError(
                csv_path, f"no {split!r} rows for generator {generator!r} (generators present: {', '.join(present)})"
            )
    if not keep:
        present = sorted({value.strip() for value in splits})
        raise CsvValidationError(csv_path, f"split {split!r} has no rows (splits present: {', '.join(present)})")

    images, classes = _column(table, "image"), _column(table, "class")
    pair_keys = _column(table, "pair") if "pair" in table.column_names else [""] * len(images)
    paths, labels, lines, pairs, problems = [], [], [], [], []
    for i in keep:
        line = i + 2
        text, label = images[i].strip(), classes[i].strip()
        if label not in ("0", "1"):
            problems.append((line, f"class must be 0 (real) or 1 (AI-generated), got {classes[i]!r}"))
        if not text:
            problems.append((line, "empty image path"))
            continue
        path = (root / text).resolve()
        if check_files and not path.is_file():
            problems.append((line, f"file not found: {path}"))
        elif check_images:
            try:
                check_image(path)
            except ImageLoadError as error:
                problems.append((line, error.reason + f": {path}"))
        paths.append(str(path))
        labels.append(int(label) if label in ("0", "1") else -1)
        lines.append(line)
        pairs.append(pair_keys[i].strip())
    if problems:
        bad_rows = len({line for line, _ in problems})
        raise CsvValidationError(csv_path, f"{bad_rows} bad row(s) in split {split!r}", problems)
    return datasets.Dataset.from_dict(
        {"image": paths, "label": labels, "line": lines, "pair": pairs},
        features=datasets.Features(
            {
                "image": datasets.Value("string"), "label": datasets.Value("int64"),
                "line": datasets.Value("int64"), "pair": datasets.Value("string"),
            }
        ),
    )


def paired_split(split: datasets.Dataset, csv_path: str | os.PathLike = "<csv>") -> datasets.Dataset:
    """Group the rows of a `load_split` result by their ``pair`` value: one row per group, with columns ``image``
    (list of paths: the real image first, then its fakes) and ``label`` (list of 0/1).

    A file listed twice in a group (the same real crop under several generators) counts once. Raises
    `CsvValidationError` naming the lines of rows without a ``pair`` value and of groups that lack a real or a fake.
    """
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    problems = []
    for path, label, line, key in zip(split["image"], split["label"], split["line"], split["pair"]):
        if not key:
            problems.append((line, "empty pair value (paired training needs the pair column filled in)"))
            continue
        groups.setdefault(key, {}).setdefault(path, (label, line))
    for key, members in groups.items():
        labels = {label for label, _ in members.values()}
        if labels != {0, 1}:
            missing = "fake (1)" if 0 in labels else "real (0)"
            problems.extend((line, f"pair {key!r} has no {missing} image") for _, line in members.values())
    if problems:
        problems.sort()
        raise CsvValidationError(csv_path, f"{len(problems)} row(s) cannot form aligned pairs", problems)
    ordered = [sorted(members.items(), key=lambda item: (item[1][0], item[0])) for members in groups.values()]
    return datasets.Dataset.from_dict(
        {
            "image": [[path for path, _ in members] for members in ordered],
            "label": [[label for _, (label, _) in members] for members in ordered],
        },
        features=datasets.Features(
            {"image": datasets.Sequence(datasets.Value("string")), "label": datasets.Sequence(datasets.Value("int64"))}
        ),
    )


@dataclass
class AugmentationConfig:
    """Training augmentations; each optional one fires with its probability (0 disables it)."""

    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (65, 100)
    noise_prob: float = 0.0
    noise_std: tuple[float, float] = (0.0, 0.03)

    def __post_init__(self):
        for name in ("hflip_prob", "vflip_prob", "blur_prob", "jpeg_prob", "noise_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("blur_sigma", "jpeg_quality", "noise_std"):
            low, high = getattr(self, name)
            if low > high or low < 0:
                raise ValueError(f"{name} must be a (low, high) range with 0 <= low <= high, got {(low, high)}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _chance(generator: torch.Generator, probability: float) -> bool:
    return probability > 0 and float(torch.rand((), generator=generator)) < probability


def augment_image(
    image: Image.Image,
    crop_size: int,
    config: AugmentationConfig,
    generator: torch.Generator,
    processor: SpaiImageProcessor,
) -> torch.Tensor:
    """One RGB image -> one augmented (3, S, S) float32 crop in [0, 1], all randomness drawn from ``generator``."""
    width, height = image.size
    top = int(torch.randint(0, max(height - crop_size, 0) + 1, (), generator=generator))
    left = int(torch.randint(0, max(width - crop_size, 0) + 1, (), generator=generator))
    # Sides shorter than S are kept whole here and padded centred by the processor below (pad-if-needed).
    crop = image.crop((left, top, left + min(crop_size, width), top + min(crop_size, height)))
    if _chance(generator, config.hflip_prob):
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if _chance(generator, config.vflip_prob):
        crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if _chance(generator, config.blur_prob):
        crop = crop.filter(ImageFilter.GaussianBlur(radius=_uniform(generator, *config.blur_sigma)))
    if _chance(generator, config.jpeg_prob):
        low, high = config.jpeg_quality
        quality = int(torch.randint(low, high + 1, (), generator=generator))
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=quality)
        crop = Image.open(buffer).convert("RGB")
    pixels = processor.to_tensor(crop)
    if _chance(generator, config.noise_prob):
        std = _uniform(generator, *config.noise_std)
        pixels = (pixels + std * torch.randn(pixels.shape, generator=generator)).clamp_(0.0, 1.0)
    return pixels


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """Well-mixed 63-bit seed for one (seed, epoch, row) triple."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class TrainTransform:
    """`datasets` batch transform: paths -> augmented crops; call `set_epoch` at each epoch start.

    A row whose ``image`` is a list (a `paired_split` group) becomes one (members, 3, S, S) tensor: every member is
    augmented with the same random draws, so all are cut at the same place and flipped alike.
    """

    def __init__(self, crop_size: int, augmentation: AugmentationConfig | None = None, seed: int = 0):
        self.crop_size = crop_size
        self.augmentation = augmentation or AugmentationConfig()
        self.seed = seed
        self.epoch = 0
        self.processor = SpaiImageProcessor(patch_size=crop_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixel_values = []
        for image, index in zip(batch["image"], batch["index"]):
            seed = _sample_seed(self.seed, self.epoch, index)
            crops = [
                augment_image(
                    load_image(path), self.crop_size, self.augmentation, torch.Generator().manual_seed(seed),
                    self.processor,
                )
                for path in ([image] if isinstance(image, str) else image)
            ]
            pixel_values.append(crops[0] if isinstance(image, str) else torch.stack(crops))
        return {"pixel_values": pixel_values, "labels": batch["label"]}


class EvalTransform:
    """`datasets` batch transform: paths -> whole images at their own resolution via the image processor."""

    def __init__(self, processor: SpaiImageProcessor):
        self.processor = processor

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {
            "pixel_values": [self.processor.to_tensor(load_image(path)) for path in batch["image"]],
            "labels": batch["label"],
        }


def train_dataset(split: datasets.Dataset, transform: TrainTransform) -> datasets.Dataset:
    """Attach the lazy training transform (adds the ``index`` column its per-row seeding needs)."""
    return split.add_column("index", list(range(len(split)))).with_transform(transform)


def eval_dataset(split: datasets.Dataset, processor: SpaiImageProcessor) -> datasets.Dataset:
    """Attach the lazy any-resolution evaluation transform."""
    return split.with_transform(EvalTransform(processor))


def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch ``labels`` (B,) and ``pixel_values``: stacked to (B, 3, H, W) when all images share one size (training
    crops always do), otherwise a list of (3, H, W) tensors (whole validation images); the model takes both.
    Aligned groups ((members, 3, S, S) with a list of labels) are laid out member after member."""
    if features and features[0]["pixel_values"].dim() == 4:
        pixel_values = [crop for f in features for crop in f["pixel_values"]]
        labels = [label for f in features for label in f["labels"]]
    else:
        pixel_values = [f["pixel_values"] for f in features]
        labels = [f["labels"] for f in features]
    same_size = len({tuple(p.shape) for p in pixel_values}) == 1
    return {
        # ``labels`` first: Trainer infers the batch size from the first tensor it finds in the batch.
        "labels": torch.tensor(labels, dtype=torch.float32),
        "pixel_values": torch.stack(pixel_values) if same_size else pixel_values,
    }
