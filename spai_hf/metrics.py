"""Detection metrics for real (0) vs AI-generated (1) scores, as an `evaluate` metric that lives in the package.

`DetectionMetrics` is an `evaluate.Metric` subclass instantiated directly (no Hub download, works offline). It takes
probabilities of "AI-generated" as ``predictions`` and 0/1 labels as ``references``; an image is called
AI-generated when its score is >= the threshold (the convention of `sklearn.metrics.roc_curve`).

Reported keys (floats; NaN where a metric is undefined, e.g. ROC-AUC with a single class):
``roc_auc``, ``average_precision``, ``accuracy`` / ``balanced_accuracy`` (threshold 0.5),
``threshold`` with ``accuracy_at_threshold`` / ``balanced_accuracy_at_threshold`` (the calibrated threshold; the
EER threshold of the same data unless one is passed in), ``eer`` and ``eer_threshold``, ``tpr_at_fpr_1pct`` and
``tpr_at_fpr_5pct``, plus the counts ``num_samples``, ``num_real``, ``num_fake``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import datasets
import evaluate
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = ["DetectionMetrics", "calibrate_threshold", "compute_detection_metrics", "equal_error_rate"]

_DESCRIPTION = "Binary AI-generated image detection metrics: ROC-AUC, AP, accuracy, balanced accuracy, EER, TPR@FPR."
_INPUTS = """
Args:
    predictions: probabilities in [0, 1] that each image is AI-generated.
    references: labels, 0 = real, 1 = AI-generated.
    threshold: optional decision threshold calibrated elsewhere (e.g. on validation data); defaults to the EER
        threshold of the given data.
"""
_FPR_TARGETS = {"tpr_at_fpr_1pct": 0.01, "tpr_at_fpr_5pct": 0.05}


def _validate(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"got {scores.size} scores but {labels.size} labels")
    if scores.size == 0:
        raise ValueError("cannot compute detection metrics on zero samples")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise ValueError("scores must be finite probabilities in [0, 1] (apply a sigmoid to logits first)")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (AI-generated), got values {sorted(set(labels.tolist()))}")
    return scores, labels.astype(np.int64)


def _has_both_classes(labels: np.ndarray, what: str) -> bool:
    if np.unique(labels).size == 2:
        return True
    present = "real" if labels[0] == 0 else "AI-generated"
    warnings.warn(f"only {present} samples are present: {what} undefined, reported as NaN", stacklevel=3)
    return False


def _eer_point(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    best = int(np.argmin(np.abs(fnr - fpr)))
    return float((fpr[best] + fnr[best]) / 2), float(np.clip(thresholds[best], 0.0, 1.0))


def equal_error_rate(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """Return ``(eer, threshold)``: the operating point where false-positive and false-negative rates meet.

    Taken at the ROC point minimising |FPR - FNR|; the EER is the mean of the two rates there. The threshold is
    clipped into [0, 1] (sklearn's first ROC threshold is +inf, meaning "call nothing AI-generated").
    Returns ``(nan, nan)`` with a warning when only one class is present.
    """
    scores, labels = _validate(scores, labels)
    if not _has_both_classes(labels, "EER is"):
        return math.nan, math.nan
    return _eer_point(scores, labels)


def calibrate_threshold(scores: Sequence[float], labels: Sequence[int], fallback: float = 0.5) -> float:
    """Decision threshold calibrated on (validation) data at the equal error rate.

    With a single class no threshold can be calibrated: warns and returns ``fallback``.
    """
    scores, labels = _validate(scores, labels)
    if np.unique(labels).size < 2:
        warnings.warn(f"threshold calibration needs both classes; using {fallback}", stacklevel=2)
        return fallback
    return _eer_point(scores, labels)[1]


def _accuracies(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """Plain and balanced accuracy (mean recall over the classes present) at ``score >= threshold``."""
    correct = (scores >= threshold).astype(np.int64) == labels
    recalls = [correct[labels == cls].mean() for cls in (0, 1) if np.any(labels == cls)]
    return float(correct.mean()), float(np.mean(recalls))


def _tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest true-positive rate reachable without the false-positive rate exceeding ``target``."""
    return float(tpr[fpr <= target].max())


class DetectionMetrics(evaluate.Metric):
    """The project's detection metrics as an `evaluate` module; create with ``DetectionMetrics()`` (offline)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, threshold: float | None = None) -> dict[str, float]:
        scores, labels = _validate(predictions, references)
        both = _has_both_classes(labels, "ROC-AUC, average precision, EER and TPR at FPR are")
        eer, eer_threshold = _eer_point(scores, labels) if both else (math.nan, math.nan)
        if threshold is None:
            threshold = eer_threshold if both else 0.5
        accuracy, balanced = _accuracies(scores, labels, 0.5)
        accuracy_t, balanced_t = _accuracies(scores, labels, threshold)
        results = {
            "roc_auc": math.nan,
            "average_precision": math.nan,
            "accuracy": accuracy,
            "balanced_accuracy": balanced,
            "threshold": float(threshold),
            "accuracy_at_threshold": accuracy_t,
            "balanced_accuracy_at_threshold": balanced_t,
            "eer": eer,
            "eer_threshold": eer_threshold,
            **{key: math.nan for key in _FPR_TARGETS},
            "num_samples": int(labels.size),
            "num_real": int((labels == 0).sum()),
            "num_fake": int((labels == 1).sum()),
        }
        if both:
            fpr, tpr, _ = roc_curve(labels, scores)
            results["roc_auc"] = float(roc_auc_score(labels, scores))
            results["average_precision"] = float(average_precision_score(labels, scores))
            results.update({key: _tpr_at_fpr(fpr, tpr, target) for key, target in _FPR_TARGETS.items()})
        return results


def compute_detection_metrics(
    scores: Sequence[float], labels: Sequence[int], threshold: float | None = None
) -> dict[str, float]:
    """One-shot helper: all `DetectionMetrics` for ``scores`` (probabilities) and 0/1 ``labels``."""
    metric = DetectionMetrics(keep_in_memory=True)
    return metric.compute(
        predictions=np.asarray(scores, np.float64), references=np.asarray(labels), threshold=threshold
    )
