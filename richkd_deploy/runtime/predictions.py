"""The prediction code export and validate share, so both report the same numbers.

`eval_arrays` turns test images into the float32 batch every runtime sees (uint8
pixels, resized to the input size, normalised with the student's mean/std: exactly
the eval transform); `predict_all` runs a runtime over it; `predictions`, `top1` and
`agreement` read the logits the way a deployment does: argmax, ties to the lowest
class index (numpy's rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from richkd_deploy.data.transforms import normalize_batch
from richkd_deploy.errors import ArtifactError

EVAL_BATCH = 256


def normalise(images_u8: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NCHW (torch) -> normalised float32 numpy, exactly as the eval transform does it."""
    return np.ascontiguousarray(normalize_batch(images_u8, mean, std).cpu().numpy(), dtype=np.float32)


def eval_arrays(dataset: Any, size: int, mean: Sequence[float], std: Sequence[float],
                limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 NCHW, labels int64) of the first `limit` items of `dataset`."""
    n = len(dataset) if limit is None else min(len(dataset), int(limit))
    return normalise(dataset.uint8_batch(np.arange(n), size=size), mean, std), \
        np.asarray(dataset.labels, dtype=np.int64)[:n]


def predict_all(runtime: Any, images: np.ndarray, batch_size: int = EVAL_BATCH, finite: bool = True) -> np.ndarray:
    """Logits for a float32 NCHW array, `batch_size` images per call. With `finite`
    (validate), NaN or infinite logits are refused: such an artifact is broken."""
    outputs = [np.asarray(runtime.predict(np.ascontiguousarray(images[i:i + batch_size])), dtype=np.float32)
               for i in range(0, len(images), batch_size)]
    if not outputs:
        return np.zeros((0, runtime.num_classes or 0), dtype=np.float32)
    logits = np.concatenate(outputs, 0)
    if logits.shape[0] != images.shape[0]:
        raise ArtifactError(f"{runtime.name}: returned {logits.shape[0]} rows for {images.shape[0]} images")
    if finite and not np.isfinite(logits).all():
        raise ArtifactError(f"{runtime.name}: produced NaN or infinite logits; the artifact is broken, re-export it")
    return logits


def predictions(logits: np.ndarray) -> np.ndarray:
    """The predicted class of each row: argmax, ties to the lowest index."""
    return np.asarray(logits).argmax(axis=1)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose predicted class is the label (NaN for no rows)."""
    if len(labels) == 0:
        return float("nan")
    return float((predictions(logits) == np.asarray(labels)).mean())


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose predicted classes match (NaN for no rows)."""
    if len(a) == 0:
        return float("nan")
    return float((predictions(a) == predictions(b)).mean())
