"""What the export runs its artifacts on: test images (parity and accuracy) and
calibration images (INT8), as float32 arrays made by the same code validate uses
(`richkd_deploy.runtime.predictions.eval_arrays`), so both commands see the same pixels."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from richkd_deploy import data
from richkd_deploy.data.for_recipe import build_eval_datasets
from richkd_deploy.errors import ArtifactError
from richkd_deploy.recipe import Recipe
from richkd_deploy.runtime.predictions import EVAL_BATCH, eval_arrays, normalise

# corrupt(uint8 images [N,C,H,W] tensor, name, severity, seed) -> same shape: validate's
# corruptions, handed in by the CLI (exporters/ does not import evaluate/)
Corrupt = Callable[[Any, str, int, int], Any]


@dataclass
class ExportData:
    """Test images and labels, calibration images (all float32 NCHW, normalised)."""

    test_x: np.ndarray
    test_y: np.ndarray
    calibration_x: np.ndarray
    dataset: str = ""
    batch_size: int = EVAL_BATCH  # validate's batch size: the same calls, the same numbers
    test_dataset: Any = None  # the raw test split, for golden.npz's uint8 images
    holdout_x: np.ndarray | None = None  # held-out training images: INT8 method search and fallback
    holdout_y: np.ndarray | None = None
    # "name:severity" -> corrupted copies of the calibration (and holdout) images (export.int8.calibration_corruptions)
    calibration_corrupted: dict[str, np.ndarray] = field(default_factory=dict)
    holdout_corrupted: dict[str, np.ndarray] = field(default_factory=dict)


HOLDOUT_IMAGES = 2000  # enough to see a 1-point top-1 drop, few enough for a dozen INT8 candidates on a CPU


def array_batches(x: np.ndarray, batch_size: int = EVAL_BATCH, limit: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive float32 batches of the first `limit` rows of `x`."""
    n = len(x) if limit is None else min(len(x), int(limit))
    for i in range(0, n, batch_size):
        yield x[i:min(i + batch_size, n)]


def progress(iterable: Iterable[Any], total: int, desc: str, quiet: bool) -> Iterable[Any]:
    if quiet:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def corrupted_arrays(dataset: Any, entries: Iterable[str], corrupt: Corrupt, size: int, mean: Any, std: Any,
                     seed: int, limit: int | None = None) -> dict[str, np.ndarray]:
    """{"name:severity": normalised float32 copies of the first `limit` images, corrupted}."""
    n = len(dataset) if limit is None else min(len(dataset), int(limit))
    images = dataset.uint8_batch(np.arange(n), size=size)
    out = {}
    for entry in entries:
        name, severity = entry.split(":")
        try:
            out[entry] = normalise(corrupt(images, name, int(severity), seed), mean, std)
        except ValueError as exc:  # an unknown name: the message lists the valid ones
            raise ArtifactError(f"export.int8.calibration_corruptions {entry!r}: {exc}") from None
    return out


def build_export_data(recipe: Recipe, meta: dict[str, Any], corrupt: Corrupt | None = None) -> ExportData:
    """Test set (for parity and accuracy), calibration images (from the training split,
    never the test or held-out images) and up to HOLDOUT_IMAGES held-out images (the INT8
    gates are judged there), with the student's own normalisation."""
    ds = build_eval_datasets(recipe)
    size, mean, std = int(meta["input_size"]), tuple(meta["mean"]), tuple(meta["std"])
    test_x, test_y = eval_arrays(ds.test, size, mean, std)
    n_cal = recipe.export.int8.images(recipe.export.calibration_images)
    calibration = data.limit_dataset(ds.train, n_cal, recipe.seed)
    calibration_x, _ = eval_arrays(calibration, size, mean, std)
    holdout_x = holdout_y = None
    if ds.holdout is not None and "int8" in recipe.export.precisions:
        holdout_x, holdout_y = eval_arrays(data.limit_dataset(ds.holdout, HOLDOUT_IMAGES, recipe.seed), size, mean, std)
    entries = recipe.export.int8.calibration_corruptions if "int8" in recipe.export.precisions else ()
    cal_corrupted: dict[str, np.ndarray] = {}
    hold_corrupted: dict[str, np.ndarray] = {}
    if entries:
        if corrupt is None:
            raise ArtifactError("export.int8.calibration_corruptions needs validate's corruptions; run it through "
                                "`richkd-deploy export` (or pass corrupt= to export_run)")
        cal_corrupted = corrupted_arrays(calibration, entries, corrupt, size, mean, std, recipe.seed)
        if ds.holdout is not None:
            hold_corrupted = corrupted_arrays(data.limit_dataset(ds.holdout, HOLDOUT_IMAGES, recipe.seed), entries,
                                              corrupt, size, mean, std, recipe.seed)
    return ExportData(test_x, test_y, calibration_x, ds.dataset, recipe.validate.batch_size, ds.test,
                      holdout_x, holdout_y, cal_corrupted, hold_corrupted)
