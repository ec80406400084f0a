"""Spectrum + logistic-regression detector: the baseline row SPAI must beat on the hard demo settings.

Features are the log power spectrum of a crop (per-channel mean removed, power averaged over the three channels,
one half-plane of the 2-D FFT since the other is its mirror), standardised, then an L2-regularised logistic
regression (scikit-learn). It sees only fixed-size crops, so every image scored must have the training size.
Evaluation follows the demo's protocol: fit on one generator's training split (its fakes + the real crops),
score every generator's test split; the splits hold different source photographs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .data import load_split
from .image_io import load_image

__all__ = ["SpectralBaseline", "cross_generator_auc", "load_csv_images", "spectrum_features"]


def spectrum_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 crops -> (N, H * (W // 2 + 1)) log power spectra."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected crops of shape (N, H, W, 3), got {images.shape}")
    pixels = images.astype(np.float64) / 255.0
    pixels -= pixels.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.rfft2(pixels, axes=(1, 2))) ** 2).mean(axis=-1)
    return np.log(power + 1e-6).reshape(len(images), -1)


class SpectralBaseline:
    """Log-spectrum features -> standardisation -> logistic regression; ``score`` gives P(AI-generated)."""

    def __init__(self, C: float = 0.1, max_iter: int = 3000):
        self.pipeline: Pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        self.image_shape: tuple[int, ...] | None = None

    def fit(self, images: np.ndarray, labels: np.ndarray) -> SpectralBaseline:
        labels = np.asarray(labels)
        if set(np.unique(labels)) != {0, 1}:
            raise ValueError("training needs both real (0) and AI-generated (1) crops")
        self.image_shape = images.shape[1:]
        self.pipeline.fit(spectrum_features(images), labels)
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        if self.image_shape is None:
            raise RuntimeError("fit the baseline before scoring")
        if images.shape[1:] != self.image_shape:
            raise ValueError(f"the baseline was fitted on crops of {self.image_shape}, got {images.shape[1:]}")
        return self.pipeline.predict_proba(spectrum_features(images))[:, 1]


def load_csv_images(
    csv_path: str | os.PathLike, split: str, generator: str | None = None, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Crops and labels of one split (and generator) of a training CSV, validated by `spai_hf.data.load_split`."""
    rows = load_split(csv_path, split, root=root, generator=generator)
    images = [np.asarray(load_image(path)) for path in rows["image"]]
    if len({image.shape for image in images}) != 1:
        raise ValueError(f"the spectral baseline needs equal-sized images; {split!r} mixes several sizes")
    return np.stack(images), np.asarray(rows["label"])


def cross_generator_auc(
    csv_path: str | os.PathLike,
    generators: Sequence[str],
    root: str | os.PathLike | None = None,
    train_split: str = "train",
    test_split: str = "test",
    C: float = 0.1,
) -> dict[str, dict[str, float]]:
    """``result[trained_on][tested_on]`` = test ROC-AUC of a baseline fitted on one generator's training split."""
    tests = {name: load_csv_images(csv_path, test_split, name, root) for name in generators}
    table = {}
    for trained_on in generators:
        detector = SpectralBaseline(C=C).fit(*load_csv_images(csv_path, train_split, trained_on, root))
        table[trained_on] = {
            name: float(roc_auc_score(labels, detector.score(images))) for name, (images, labels) in tests.items()
        }
    return table
