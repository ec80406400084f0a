"""Tests for spai_hf.metrics: values against sklearn / hand-worked cases, single-class handling, offline use."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

from spai_hf.metrics import DetectionMetrics, calibrate_threshold, compute_detection_metrics, equal_error_rate


@pytest.fixture
def noisy_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(0.35 * labels + 0.65 * rng.random(300), 0, 1)
    return scores, labels


def test_agrees_with_sklearn(noisy_scores):
    scores, labels = noisy_scores
    result = compute_detection_metrics(scores, labels)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["average_precision"] == pytest.approx(average_precision_score(labels, scores))
    predicted = (scores >= 0.5).astype(int)
    assert result["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    at_threshold = (scores >= result["threshold"]).astype(int)
    assert result["balanced_accuracy_at_threshold"] == pytest.approx(balanced_accuracy_score(labels, at_threshold))
    assert (result["num_samples"], result["num_real"], result["num_fake"]) == (300, (labels == 0).sum(), labels.sum())


def test_hand_worked_example():
    # Real: 0.1 0.2 0.3 0.6   Fake: 0.4 0.7 0.8 0.9  -> one real above one fake at every threshold in (0.4, 0.6].
    scores = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    result = compute_detection_metrics(scores, labels)
    assert result["roc_auc"] == pytest.approx(15 / 16)
    assert result["eer"] == pytest.approx(0.25)
    assert result["accuracy"] == pytest.approx(6 / 8)  # 0.6 called fake, 0.4 called real
    # No real above 0.6 except itself; at FPR 0 the best threshold is 0.7 -> TPR 3/4.
    assert result["tpr_at_fpr_1pct"] == pytest.approx(0.75)
    assert result["tpr_at_fpr_5pct"] == pytest.approx(0.75)
    eer, threshold = equal_error_rate(scores, labels)
    fpr = np.mean(np.asarray(scores)[:4] >= threshold)
    fnr = np.mean(np.asarray(scores)[4:] < threshold)
    assert eer == pytest.approx(0.25) and fpr == pytest.approx(0.25) and fnr == pytest.approx(0.25)


def test_perfect_separation():
    result = compute_detection_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert result["roc_auc"] == 1.0 and result["eer"] == 0.0 and result["tpr_at_fpr_1pct"] == 1.0
    assert 0.2 < result["threshold"] <= 0.8 and result["accuracy_at_threshold"] == 1.0


def test_external_threshold_is_used(noisy_scores):
    scores, labels = noisy_scores
    result = compute_detection_metrics(scores, labels, threshold=0.9)
    assert result["threshold"] == 0.9
    assert result["accuracy_at_threshold"] == pytest.approx(np.mean((scores >= 0.9) == labels))


def test_calibrated_threshold_is_eer_threshold(noisy_scores):
    scores, labels = noisy_scores
    threshold = calibrate_threshold(scores, labels)
    assert threshold == compute_detection_metrics(scores, labels)["eer_threshold"]
    fpr = np.mean(scores[labels == 0] >= threshold)
    fnr = np.mean(scores[labels == 1] < threshold)
    assert abs(fpr - fnr) < 0.05


def test_single_class_gives_nan_with_warning():
    with pytest.warns(UserWarning, match="only real samples"):
        result = compute_detection_metrics([0.1, 0.7, 0.2], [0, 0, 0])
    for key in ("roc_auc", "average_precision", "eer", "eer_threshold", "tpr_at_fpr_1pct"):
        assert math.isnan(result[key]), key
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["balanced_accuracy"] == pytest.approx(2 / 3)
    with pytest.warns(UserWarning, match="needs both classes"):
        assert calibrate_threshold([0.3, 0.9], [1, 1]) == 0.5


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 1.5], [0, 1], "probabilities"),
        ([0.1, float("nan")], [0, 1], "probabilities"),
        ([0.1, 0.2], [0, 2], "labels must be 0"),
        ([0.1], [0, 1], "number of predictions"),
        ([], [], "zero samples"),
    ],
)
def test_bad_inputs_raise(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        compute_detection_metrics(scores, labels)


def test_metric_module_accumulates_batches_offline(noisy_scores, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scores, labels = noisy_scores
    metric = DetectionMetrics(keep_in_memory=True)
    for start in range(0, 300, 100):
        metric.add_batch(predictions=scores[start : start + 100], references=labels[start : start + 100])
    assert metric.compute() == compute_detection_metrics(scores, labels)
