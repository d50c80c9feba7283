"""`validate --calibrate`, the evaluation half: fit the temperature on the held-out split.

The temperature is fitted with model.onnx (the shipped FP32 graph, sha256-checked)
on the held-out split of the training set, never on the test set. Writing
`model.calibrated.onnx` is an exporter's job: the caller passes the exporter's
function (`exporters.calibrated.export_calibrated`), which stages, checks and commits
the file through the export's commit protocol. So `evaluate/` never imports
`exporters/`, and no file of an export is written outside that protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from richkd_deploy.data.for_recipe import build_eval_datasets
from richkd_deploy.errors import ArtifactError, RichKDError
from richkd_deploy.evaluate import metrics
from richkd_deploy.manifest import Manifest
from richkd_deploy.recipe import Recipe
from richkd_deploy.runtime import create_runtime, predict_all
from richkd_deploy.runtime.predictions import eval_arrays

CHECK_IMAGES = 256


class WriteCalibrated(Protocol):
    """The exporter step that writes and commits the calibrated model."""

    def __call__(self, manifest: Manifest, temperature: float, check_x: np.ndarray, check_logits: np.ndarray,
                 calibrated_on: str) -> Manifest: ...


def calibrate_run(manifest: Manifest | None, meta: dict[str, Any], recipe: Recipe, write: WriteCalibrated,
                  log: Callable[[str], None]) -> Manifest:
    """Fit T with model.onnx on the held-out split, then have the exporter write
    model.calibrated.onnx; returns the manifest that lists it."""
    if manifest is None:
        raise ArtifactError("--calibrate needs an export: run richkd-deploy export first")
    ds = build_eval_datasets(recipe)
    if ds.holdout is None or len(ds.holdout) == 0:
        raise RichKDError("--calibrate needs a held-out split to fit the temperature on; set data.holdout_fraction > 0 "
                          "and retrain")
    x, labels = eval_arrays(ds.holdout, recipe.data.input_size, meta["mean"], meta["std"])
    with create_runtime(manifest.export_dir / "model.onnx", provider="cpu", manifest=manifest) as fp32:
        logits = predict_all(fp32, x, recipe.validate.batch_size)
    t = float(metrics.fit_temperature(logits, labels))
    manifest = write(manifest, t, x[:CHECK_IMAGES], logits[:CHECK_IMAGES],
                     f"holdout ({len(labels)} training images)")
    log(f"calibrate: T={t:.4f} fitted on {len(labels)} held-out images; NLL {metrics.nll(logits, labels):.4f} -> "
        f"{metrics.nll(logits / t, labels):.4f}; wrote {manifest.export_dir / 'model.calibrated.onnx'}")
    return manifest
