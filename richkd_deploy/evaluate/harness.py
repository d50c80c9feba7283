"""`richkd-deploy validate`: every artifact through its own runtime, on clean and
corrupted test images, against the recipe's gates.

The harness evaluates what ships (the exported files, each sha256-checked against
the manifest), not the training-time model; the torch student and the teacher are
evaluated alongside as reference rows (`evaluate.rows`). Corrupted images are
generated once per (corruption, severity) cell and fed to every runtime, so every
row sees exactly the same pixels.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from richkd_deploy import __version__
from richkd_deploy.data.for_recipe import build_eval_datasets
from richkd_deploy.errors import ArtifactError, RichKDError
from richkd_deploy.evaluate import corruptions as corr
from richkd_deploy.evaluate import gates as gates_mod
from richkd_deploy.evaluate.calibrate import WriteCalibrated, calibrate_run
from richkd_deploy.evaluate.distributed import distribute_rows, share_exit_code
from richkd_deploy.evaluate.report import write_reports
from richkd_deploy.evaluate.rows import Row, artifact_rows, evaluate_clean, reference_rows
from richkd_deploy.manifest import read_manifest
from richkd_deploy.recipe import Recipe
from richkd_deploy.runs import RunDir, atomic_write_json, run_lock
from richkd_deploy.runtime.predictions import eval_arrays, normalise, predictions
from richkd_deploy.student import load_student
from richkd_deploy.train.dist import DistContext

SCHEMA = "richkd-deploy/validate/1"
Log = Callable[[str], None]


@dataclass
class EvalImages:
    """The clean test images (and the held-out split, for temperature fits) as every runtime sees them."""

    test_x: np.ndarray
    labels: np.ndarray
    holdout_x: np.ndarray | None
    holdout_y: np.ndarray | None
    test_ds: Any


def load_images(recipe: Recipe, meta: dict[str, Any]) -> EvalImages:
    ds = build_eval_datasets(recipe, test_limit=recipe.validate.test_limit)
    size, mean, std = recipe.data.input_size, meta["mean"], meta["std"]
    test_x, labels = eval_arrays(ds.test, size, mean, std)
    want = (meta.get("channels", 3), meta["input_size"], meta["input_size"])
    if tuple(test_x.shape[1:]) != want:
        raise ArtifactError(f"the test images are {tuple(test_x.shape[1:])} but the model expects {want}; "
                            "check data.dataset and data.input_size")
    holdout_x = holdout_y = None
    if ds.holdout is not None:
        holdout_x, holdout_y = eval_arrays(ds.holdout, size, mean, std)
    return EvalImages(test_x, labels, holdout_x, holdout_y, ds.test)


def validate_run(run_dir: Path, artifacts: Sequence[str] = (), calibrate: bool = False, provider: str = "cpu",
                 quiet: bool = False, log: Log = print, write_calibrated: WriteCalibrated | None = None,
                 runtime: str | None = None, dist: DistContext | None = None) -> dict[str, Any]:
    """Evaluate a run's artifacts, write eval/results.json and the reports, and return
    the results document (its `exit_code` is 0 when every gate holds, 1 otherwise).

    `calibrate` needs `write_calibrated`, the exporter step that writes and commits
    model.calibrated.onnx (`exporters.calibrated.export_calibrated`; the CLI passes it).
    `runtime` runs the ONNX artifacts on another runtime than onnxruntime (e.g. "openvino").
    `dist` (torchrun ranks): every rank runs its share of each image set and rank 0 alone
    holds the lock, calibrates, writes and logs (`evaluate.distributed`); the other ranks
    return {"exit_code": rank 0's}.
    """
    run = RunDir(Path(run_dir))
    dist = dist or DistContext.single()
    if not dist.is_main:
        log, quiet = (lambda _m: None), True
    with run_lock(run.root, "validate") if dist.is_main else contextlib.nullcontext():
        student = load_student(run.student)
        recipe, v = student.recipe(), student.recipe().validate
        manifest = read_manifest(run.export_dir) if run.manifest.exists() else None
        if calibrate:
            if write_calibrated is None:
                raise TypeError("validate_run(calibrate=True) needs write_calibrated (exporters.calibrated)")
            with dist.main_first():  # rank 0 writes model.calibrated.onnx; the others read its manifest
                manifest = (calibrate_run(manifest, student.meta, recipe, write_calibrated, log) if dist.is_main
                            else read_manifest(run.export_dir))
        images = load_images(recipe, student.meta)
        rows = reference_rows(run, student.meta) + artifact_rows(run, manifest, artifacts, provider, runtime, log)
        distribute_rows(rows, dist)
        log(f"validate: {len(rows)} models on {len(images.labels)} clean test images")
        evaluate_clean(rows, images.test_x, images.labels, images.holdout_x, images.holdout_y, v.batch_size,
                       v.confidence_threshold, log)
        corr_info = _corruption_suite(rows, images.test_ds, recipe, student.meta, quiet, log)
        results = _finish(run, student.meta, recipe, rows, corr_info, len(images.labels), log) if dist.is_main else {}
        code = share_exit_code(results.get("exit_code"), dist)
        return results or {"exit_code": code}


def _finish(run: RunDir, meta: dict[str, Any], recipe: Recipe, rows: list[Row], corr_info: dict[str, Any],
            n_test: int, log: Log) -> dict[str, Any]:
    """Gates, results.json and the reports."""
    docs = [r.doc for r in rows]
    gate_results = [gates_mod.clip_gate(bool(meta.get("clip_random")), recipe.validate.allow_random_clip),
                    *gates_mod.evaluate_gates(docs, recipe.validate.gates)]
    code = gates_mod.exit_code(gate_results)
    results = {
        "schema": SCHEMA, "run": str(run.root), "recipe_hash": meta.get("recipe_hash"),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "version": __version__,
        "clip_random": bool(meta.get("clip_random")),
        "dataset": {"name": recipe.data.dataset, "test_samples": int(n_test), **corr_info},
        "rows": docs, "gates": gate_results, "exit_code": code,
    }
    atomic_write_json(run.eval_dir / "results.json", _jsonable(results))
    write_reports(results, run.eval_dir)
    for line in gates_mod.summarize(gate_results).splitlines():
        log(line)
    log(f"validate: {'every gate holds' if code == 0 else 'a gate failed'}; report: {run.eval_dir / 'report.html'}")
    return results


def _corruption_names(recipe: Recipe) -> list[str]:
    c = recipe.validate.corruptions
    names = list(c.names) if c.names else list(corr.CORRUPTIONS)
    unknown = [n for n in names if n not in corr.CORRUPTIONS + corr.EXTRA_CORRUPTIONS]
    if unknown:
        raise RichKDError(f"validate.corruptions.names: unknown {unknown}; choose from {', '.join(corr.CORRUPTIONS)}")
    return names


def _corruption_suite(rows: list[Row], test_ds: Any, recipe: Recipe, meta: dict[str, Any], quiet: bool,
                      log: Log) -> dict[str, Any]:
    c, size, bs = recipe.validate.corruptions, recipe.data.input_size, recipe.validate.batch_size
    names = _corruption_names(recipe)
    n = min(c.samples, len(test_ds))
    idx = np.random.default_rng(c.seed).choice(len(test_ds), size=n, replace=False) if n < len(test_ds) \
        else np.arange(len(test_ds))
    idx.sort()
    clean_u8, labels = test_ds.uint8_batch(idx, size=size), np.asarray(test_ds.labels, dtype=np.int64)[idx]
    bar = tqdm([(name, s) for name in names for s in c.severities], desc="corruptions", disable=quiet, leave=False)
    for name, severity in bar:
        if c.source:
            images, cell_labels = corr.load_published(Path(c.source), name, severity, n=n,
                                                      classes=test_ds.classes, size=size)
        else:
            images, cell_labels = corr.corrupt(clean_u8, name, severity, seed=c.seed), labels
        x = normalise(images, meta["mean"], meta["std"])
        for row in [r for r in rows if r.logits is not None]:
            try:
                pred = predictions(row.predict(x, bs))
            except Exception as exc:  # noqa: BLE001 - same rule as on clean images (see evaluate.rows)
                if row.doc["role"] != "artifact" or row.user_given:
                    raise
                row.give_up(exc, log)
                continue
            row.corr_correct.setdefault(name, {})[str(severity)] = float((pred == cell_labels).mean())
    bar.close()
    for row in rows:
        if row.logits is not None:
            accs = [a for per in row.corr_correct.values() for a in per.values()]
            row.doc["corruptions"] = {"accuracy": row.corr_correct,
                                      "mean_accuracy": float(np.mean(accs)) if accs else None}
    frost = corr.frost_source() if "frost" in names else None
    if frost == "procedural":
        log("note: frost uses a procedural ice texture (install imagecorruptions-imaug for the reference textures)")
    return {"corruption_samples": int(n), "severities": list(c.severities), "corruptions": names,
            "frost_source": frost, "corruption_source": str(c.source) if c.source else "generated"}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
