"""``spai-svd test``: score a labelled CSV and report detection metrics per split and per generator.

Rows are read and validated by `spai_hf.data.load_split`; scoring goes through `spai_hf.inference` (so unreadable
images become error rows, excluded from the metrics and counted); metrics come from `spai_hf.metrics`.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_open, atomic_write_json
from .data import load_split
from .inference import ImageResult
from .metrics import compute_detection_metrics

__all__ = ["LabelledImage", "TABLE_METRICS", "group_metrics", "load_labelled", "write_test_outputs"]

DEFAULT_THRESHOLD = 0.5
TABLE_METRICS = ("roc_auc", "average_precision", "accuracy_at_threshold", "balanced_accuracy_at_threshold", "eer")


@dataclass(frozen=True)
class LabelledImage:
    """One CSV row to evaluate: absolute path, split, 0/1 label, generator ("" without that column), CSV line."""

    path: str
    split: str
    label: int
    generator: str
    line: int


def _csv_columns(csv_path: Path) -> tuple[list[str], dict[int, dict[str, str]]]:
    """Header and every row by CSV line number (line 1 is the header)."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = {line: row for line, row in enumerate(reader, start=2)}
        return list(reader.fieldnames or []), rows


def load_labelled(
    csv_path: str | os.PathLike, splits: Sequence[str] | None, root: str | os.PathLike | None = None
) -> list[LabelledImage]:
    """Validated rows of ``splits`` (None: every split in the file, in order of first appearance)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"data CSV {str(csv_path)!r} does not exist")
    header, raw = _csv_columns(csv_path)
    if splits is None:
        splits = list(dict.fromkeys(row.get("split", "").strip() for row in raw.values()))
    has_generator = "generator" in header
    rows: list[LabelledImage] = []
    for split in splits:
        table = load_split(csv_path, split, root=root)
        for path, label, line in zip(table["image"], table["label"], table["line"]):
            generator = raw[line].get("generator", "").strip() if has_generator else ""
            rows.append(LabelledImage(path, split, int(label), generator, int(line)))
    return rows


def _metrics(scores: list[float], labels: list[int], threshold: float) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class groups: undefined metrics come back as NaN, shown as "-"
        return compute_detection_metrics(scores, labels, threshold=threshold)


def group_metrics(
    rows: Sequence[LabelledImage], results: Sequence[ImageResult], column: str, threshold: float
) -> list[dict]:
    """Metrics per split, then per (split, generator) when the CSV names generators; failed images excluded."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((row.split, None), []).append(i)
        if row.generator:
            groups.setdefault((row.split, row.generator), []).append(i)
    report = []
    for (split, generator), members in groups.items():
        scored = [i for i in members if results[i].scores is not None]
        entry = {"split": split, "generator": generator, "num_failed": len(members) - len(scored), "metrics": None}
        if scored:
            entry["metrics"] = _metrics(
                [results[i].scores[column] for i in scored], [rows[i].label for i in scored], threshold
            )
        report.append(entry)
    return report


def write_test_outputs(
    output_dir: str | os.PathLike,
    rows: Sequence[LabelledImage],
    results: Sequence[ImageResult],
    column: str,
    threshold: float,
    report: list[dict],
    model: dict[str, str | None],
) -> tuple[Path, Path]:
    """Write ``predictions.csv`` (one row per image) and ``metrics.json`` atomically; returns their paths."""
    output = Path(output_dir)
    predictions, metrics_path = output / "predictions.csv", output / "metrics.json"
    with atomic_open(predictions, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "split", "generator", "label", "score", "prediction", "error", "line"])
        for row, result in zip(rows, results):
            score = result.scores[column] if result.scores is not None else None
            writer.writerow([
                row.path, row.split, row.generator, row.label,
                "" if score is None else f"{score:.6f}",
                "" if score is None else int(score >= threshold),
                result.error, row.line,
            ])
    clean = [
        {**entry, "metrics": None if entry["metrics"] is None else
         {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in entry["metrics"].items()}}
        for entry in report
    ]
    atomic_write_json(metrics_path, {"model": model, "threshold": threshold, "groups": clean})
    return predictions, metrics_path
