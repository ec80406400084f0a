"""Batch scoring of image files under a base SPAI model and any number of adapters at once.

Every adapter is loaded once onto one base model (PEFT, one adapter name each). A batch of images is decoded once
(in DataLoader workers), and one forward pass scores each image under the base and every adapter: the model's
``repeat_per_image`` repeats only the backbone rows, and PEFT's mixed-adapter ``adapter_names`` routes each repeat
through its adapter, so decoding, padding and spectral filtering happen once per image, not once per adapter.

Images that cannot be read (corrupt, truncated, unsupported, over the pixel limit) become results with an error
and never stop a run.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .atomic import atomic_open
from .heatmaps import save_heatmap
from .image_io import DEFAULT_MAX_IMAGE_PIXELS, ImageLoadError, find_images, load_image
from .registry import ResolvedAdapter

__all__ = [
    "BASE_ADAPTER",
    "ImageResult",
    "MultiAdapterScorer",
    "ScoreColumn",
    "collect_inputs",
    "prediction_columns",
    "score_images",
    "to_pixels",
    "write_predictions",
]

BASE_ADAPTER = "__base__"
"""PEFT's name for "no adapter" in a mixed-adapter batch."""

CSV_PATH_COLUMNS = ("image", "path")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ScoreColumn:
    """One way of scoring an image: the base model or one adapter, with its calibrated threshold if known."""

    name: str
    adapter: str
    threshold: float | None = None


@dataclass
class ImageResult:
    """Outcome for one input file: scores per column name (P(AI-generated)), or an error message."""

    path: str
    width: int | None = None
    height: int | None = None
    scores: dict[str, float] | None = None
    error: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def _paths_from_csv(csv_path: Path, csv_root: Path | None) -> list[Path]:
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        column = next((name for name in CSV_PATH_COLUMNS if name in (reader.fieldnames or [])), None)
        if column is None:
            raise ValueError(f"{str(csv_path)!r} has no {' or '.join(CSV_PATH_COLUMNS)} column")
        root = csv_root if csv_root is not None else csv_path.parent
        return [root / row[column] for row in reader if row.get(column)]


def collect_inputs(inputs: Iterable[str], csv_root: str | os.PathLike | None = None) -> list[Path]:
    """Expand files, folders (recursive), glob patterns and CSVs (column ``image`` or ``path``) into image paths.

    Order is kept and duplicates dropped. A named file that does not exist is kept (it becomes an error row);
    a glob that matches nothing or a folder without images raises `ValueError`.
    """
    root = Path(csv_root) if csv_root is not None else None
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            images = find_images(path)
            if not images:
                raise ValueError(f"folder {item!r} holds no image files")
            found.extend(images)
        elif path.suffix.lower() == ".csv" and path.is_file():
            found.extend(_paths_from_csv(path, root))
        elif not path.exists() and _GLOB_CHARS.search(item):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            if not matches:
                raise ValueError(f"no file matches {item!r}")
            for match in map(Path, matches):
                found.extend(find_images(match) if match.is_dir() else [match])
        else:
            found.append(path)
    return list(dict.fromkeys(found))


class _ImageFiles(Dataset):
    """Decodes one file per item into the model's (3, H, W) input, or reports why it cannot.

    Holds only the paths and the image processor, so worker processes never receive the model.
    """

    def __init__(self, paths: Sequence[Path], processor, max_pixels: int):
        self.paths = paths
        self.processor = processor
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, tuple[int, int] | None, str]:
        try:
            image = load_image(self.paths[index], max_pixels=self.max_pixels)
        except ImageLoadError as error:
            return index, None, None, error.reason
        return index, to_pixels(self.processor, image), (image.width, image.height), ""


def to_pixels(processor, image: Image.Image) -> torch.Tensor:
    """One decoded image -> the model's (3, H, W) input in [0, 1] (padded to a patch when smaller)."""
    return processor(image, return_tensors="pt")["pixel_values"][0]


def _keep_list(batch: list) -> list:
    return batch


# ---------------------------------------------------------------------------------------------------------------
# Model


def _column_name(name: str, taken: set[str]) -> str:
    """A CSV-friendly unique column suffix for ``name``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "adapter"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


class MultiAdapterScorer:
    """A base SPAI model with adapters loaded side by side, scoring every image under each ``columns`` entry."""

    def __init__(self, model: torch.nn.Module, processor, columns: Sequence[ScoreColumn]):
        if not columns:
            raise ValueError("at least one score column is needed")
        self.model = model
        self.processor = processor
        self.columns = list(columns)

    @classmethod
    def from_pretrained(
        cls,
        base: str,
        adapters: Sequence[ResolvedAdapter] = (),
        *,
        include_base: bool = True,
        device: str | torch.device | None = None,
        max_patches_per_forward: int | None = None,
    ) -> MultiAdapterScorer:
        """Load ``base`` (folder or Hub id) and each adapter once, as PEFT adapters of one model."""
        from peft import PeftModel

        import svd_adapter  # noqa: F401  (registers the SVD residual tuner with PEFT)

        from .image_processing_spai import SpaiImageProcessor
        from .modeling_spai import SpaiForImageClassification

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = SpaiForImageClassification.from_pretrained(base)
        if max_patches_per_forward is not None:
            if max_patches_per_forward < 1:
                raise ValueError("--max-patches-per-forward must be >= 1")
            model.config.max_patches_per_forward = max_patches_per_forward
        processor = SpaiImageProcessor(patch_size=model.config.patch_size)
        taken: set[str] = set()
        columns = [ScoreColumn(_column_name("base", taken), BASE_ADAPTER)] if include_base else []
        for index, adapter in enumerate(adapters):
            peft_name = f"adapter_{index}"
            if index == 0:
                model = PeftModel.from_pretrained(model, str(adapter.path), adapter_name=peft_name)
            else:
                model.load_adapter(str(adapter.path), adapter_name=peft_name)
            columns.append(ScoreColumn(_column_name(adapter.name, taken), peft_name, adapter.threshold))
        return cls(model.to(device).eval(), processor, columns)

    def score(self, pixels: list[torch.Tensor], with_attention: bool = False) -> tuple[np.ndarray, list | None]:
        """P(AI-generated) as a (len(pixels), len(columns)) array; with ``with_attention`` also, per image and
        column, the (weights, boxes) pair of the spectral-context attention."""
        repeat = len(self.columns)
        kwargs = {"pixel_values": pixels, "repeat_per_image": repeat, "output_attentions": with_attention}
        if any(column.adapter != BASE_ADAPTER for column in self.columns):
            kwargs["adapter_names"] = [column.adapter for column in self.columns] * len(pixels)
        output = self.model(**kwargs)
        probs = torch.sigmoid(output.logits.float()).view(len(pixels), repeat).cpu().numpy()
        if not with_attention:
            return probs, None
        pairs = [(w.float().cpu().numpy(), b.cpu().numpy()) for w, b in zip(output.attentions, output.patch_boxes)]
        return probs, [pairs[i * repeat : (i + 1) * repeat] for i in range(len(pixels))]


# ---------------------------------------------------------------------------------------------------------------
# Scoring loop


def _write_heatmaps(directory: Path, index: int, path: Path, pixels: torch.Tensor, size: tuple[int, int],
                    columns: Sequence[ScoreColumn], pairs: list) -> None:
    """Heatmaps of one image for every column, on the image as decoded (padding removed)."""
    width, height = size
    top, left = (pixels.shape[-2] - height) // 2, (pixels.shape[-1] - width) // 2
    crop = pixels[:, top : top + height, left : left + width]
    image = Image.fromarray((crop * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    for column, (weights, boxes) in zip(columns, pairs):
        shifted = boxes - np.array([top, left, 0])
        save_heatmap(image, shifted, weights, directory / f"{index:06d}_{path.stem}.{column.name}")


def _score_batch(scorer: MultiAdapterScorer, items: list, with_attention: bool) -> Iterator[tuple[tuple, object]]:
    """Yield (item, scores-or-exception) for each decoded item; a failed batch is retried image by image."""
    try:
        probs, attention = scorer.score([item[1] for item in items], with_attention)
        for i, item in enumerate(items):
            yield item, (probs[i], attention[i] if attention else None)
    except Exception as error:  # noqa: BLE001 -- isolate the image that breaks the batch, keep the run going
        if len(items) == 1:
            yield items[0], error
            return
        for item in items:
            yield from _score_batch(scorer, [item], with_attention)


def score_images(
    paths: Sequence[Path],
    scorer: MultiAdapterScorer,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    max_pixels: int | None = None,
    heatmap_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[ImageResult]:
    """Score every path under every column of ``scorer``; one `ImageResult` per path, in input order."""
    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    heatmaps = Path(heatmap_dir) if heatmap_dir is not None else None
    dataset = _ImageFiles(paths, scorer.processor, max_pixels or DEFAULT_MAX_IMAGE_PIXELS)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_keep_list)
    results = [ImageResult(path=str(path)) for path in paths]
    with tqdm(total=len(paths), unit="img", disable=not progress, desc="scoring") as bar:
        for batch in loader:
            decoded = []
            for index, pixels, size, error in batch:
                if pixels is None:
                    results[index].error = error
                else:
                    results[index].width, results[index].height = size
                    decoded.append((index, pixels, size))
            outcomes = _score_batch(scorer, decoded, heatmaps is not None) if decoded else ()
            for (index, pixels, size), outcome in outcomes:
                if isinstance(outcome, Exception):
                    results[index].error = f"scoring failed ({type(outcome).__name__}: {outcome})"
                    continue
                probs, pairs = outcome
                results[index].scores = {c.name: float(p) for c, p in zip(scorer.columns, probs)}
                if pairs is not None:
                    _write_heatmaps(heatmaps, index, paths[index], pixels, size, scorer.columns, pairs)
            bar.update(len(batch))
    return results


# ---------------------------------------------------------------------------------------------------------------
# Output


def prediction_columns(columns: Sequence[ScoreColumn]) -> list[str]:
    """CSV header: path, width, height, score_<column> each, verdict_<column> where a threshold is known, error."""
    header = ["path", "width", "height"]
    header += [f"score_{column.name}" for column in columns]
    header += [f"verdict_{column.name}" for column in columns if column.threshold is not None]
    return header + ["error"]


def _verdict(score: float, threshold: float) -> str:
    return "ai-generated" if score >= threshold else "real"


def write_predictions(path: str | os.PathLike, results: Sequence[ImageResult], columns: Sequence[ScoreColumn]) -> None:
    """Write one CSV row per result atomically (scores with 6 decimals, empty cells for failed images)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=prediction_columns(columns))
        writer.writeheader()
        for result in results:
            row: dict[str, object] = {"path": result.path, "width": result.width, "height": result.height,
                                      "error": result.error}
            for column in columns:
                score = result.scores.get(column.name, math.nan) if result.scores else math.nan
                if not math.isnan(score):
                    row[f"score_{column.name}"] = f"{score:.6f}"
                    if column.threshold is not None:
                        row[f"verdict_{column.name}"] = _verdict(score, column.threshold)
            writer.writerow(row)
