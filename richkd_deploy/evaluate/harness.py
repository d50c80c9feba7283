"""`richkd-deploy validate`: every artifact through its own backend, on clean and
corrupted test images, against the recipe's gates.

The harness evaluates what ships (the exported files, each sha256-checked against
the manifest), not the training-time model; the torch student and the teacher are
evaluated alongside as reference rows. Corrupted images are generated once per
(corruption, severity) cell and fed to every backend, so every row sees exactly the
same pixels.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from richkd_deploy import __version__
from richkd_deploy.data.for_recipe import build_eval_datasets
from richkd_deploy.data.transforms import normalize_batch
from richkd_deploy.errors import ArtifactError, MissingDependencyError, RichKDError
from richkd_deploy.evaluate import corruptions as corr
from richkd_deploy.evaluate import gates as gates_mod
from richkd_deploy.evaluate import metrics
from richkd_deploy.models.checkpoint import load_student_checkpoint
from richkd_deploy.recipe import Recipe, from_dict
from richkd_deploy.runs import RunDir, atomic_write_json, run_lock

SCHEMA = "richkd-deploy/validate/1"
HIST_BINS = 20


def _normalise(images_u8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NCHW -> normalised float32 numpy, exactly as the eval transform does it."""
    return normalize_batch(images_u8, mean, std).cpu().numpy()


def predict_all(backend: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for a float32 NCHW array, batch by batch; refuses non-finite output."""
    outputs = [np.asarray(backend.predict(np.ascontiguousarray(images[i:i + batch_size])), dtype=np.float32)
               for i in range(0, len(images), batch_size)]
    logits = np.concatenate(outputs, 0)
    if logits.shape[0] != images.shape[0]:
        raise ArtifactError(f"{backend.name}: returned {logits.shape[0]} rows for {images.shape[0]} images")
    if not np.isfinite(logits).all():
        raise ArtifactError(f"{backend.name}: produced NaN or infinite logits; the artifact is broken, re-export it")
    return logits


def confidence_histogram(logits: np.ndarray, labels: np.ndarray, bins: int = HIST_BINS) -> dict[str, list]:
    return metrics.confidence_histogram(logits, labels, bins)


def clean_metrics(logits: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    k = logits.shape[1]
    return {
        "top1": metrics.top_k_accuracy(logits, labels, k=1),
        "top5": metrics.top_k_accuracy(logits, labels, k=min(5, k)),
        "nll": metrics.nll(logits, labels),
        "brier": metrics.brier(logits, labels),
        "ece": metrics.ece(logits, labels, n_bins=15),
        "mce": metrics.mce(logits, labels, n_bins=15),
        "adaptive_ece": metrics.adaptive_ece(logits, labels, n_bins=15),
        "reliability": metrics.reliability_diagram(logits, labels, n_bins=15),
        "confidence": metrics.confidence_analysis(logits, labels, threshold),
        "confidence_hist": confidence_histogram(logits, labels),
        "per_class_top1": metrics.per_class_accuracy(logits, labels),
    }


def calibration(holdout_logits: np.ndarray | None, holdout_labels: np.ndarray | None, test_logits: np.ndarray,
                test_labels: np.ndarray) -> dict[str, float] | None:
    """Temperature fitted on the held-out split (never on the test set), judged on the test set."""
    if holdout_logits is None or len(holdout_logits) == 0:
        return None
    t = float(metrics.fit_temperature(holdout_logits, holdout_labels))
    scaled = metrics.apply_temperature(test_logits, t)
    return {"temperature": t,
            "ece_before": metrics.ece(test_logits, test_labels), "ece_after": metrics.ece(scaled, test_labels),
            "nll_before": metrics.nll(test_logits, test_labels), "nll_after": metrics.nll(scaled, test_labels)}


class _Row:
    """One evaluated model: its backend (None when pending) and its results so far."""

    def __init__(self, name: str, role: str, file: str, backend: Any, backend_name: str, precision: str,
                 reason: str | None = None) -> None:
        self.backend = backend
        self.logits: np.ndarray | None = None
        self.corr_correct: dict[str, dict[str, float]] = {}
        self.doc: dict[str, Any] = {"name": name, "role": role, "file": file, "backend": backend_name,
                                    "precision": precision, "status": "ok" if backend is not None else "pending",
                                    "reason": reason, "clean": None, "agreement": None, "calibration": None,
                                    "corruptions": None, "seconds": 0.0}


def _artifact_rows(run: RunDir, manifest: dict[str, Any] | None, artifacts: Sequence[str], provider: str,
                   log: Callable[[str], None]) -> list[_Row]:
    from richkd_deploy.evaluate.backends import create_backend

    if artifacts:
        files = [Path(a) for a in artifacts]
        entries = {Path(a).name: {} for a in artifacts}
    elif manifest is not None:
        entries = {e["file"]: e for e in manifest["artifacts"] if str(e["file"]).endswith((".onnx", ".engine"))}
        files = [run.export_dir / f for f in entries]
    else:
        log("no export/manifest.json: evaluating the torch student only (run richkd-deploy export first)")
        return []
    rows = []
    for path in files:
        entry = entries.get(path.name, {}) if not artifacts else {}
        precision = entry.get("precision") or ("int8" if ".int8." in path.name else "fp16" if ".fp16." in path.name
                                                else "fp32")
        is_engine = path.suffix == ".engine"
        backend_name = "tensorrt" if is_engine else f"onnxruntime-{provider}"
        try:
            backend = create_backend(path if path.is_absolute() or artifacts else run.export_dir / path.name,
                                     provider=None if is_engine else provider, manifest=manifest)
            rows.append(_Row(path.name, "artifact", str(path), backend, backend_name, precision))
        except MissingDependencyError as exc:
            rows.append(_Row(path.name, "artifact", str(path), None, backend_name, precision, reason=str(exc)))
            log(f"PENDING {path.name}: {exc}")
    return rows


def _pending_fp16_on_cpu(row: _Row, images: np.ndarray, log: Callable[[str], None]) -> bool:
    """An FP16 graph is meant for GPUs; where the CPU runtime cannot run it, the row is
    pending rather than failed or silently skipped."""
    try:
        row.backend.predict(images[:2])
        return False
    except Exception as exc:  # noqa: BLE001 - runtime-specific failure types
        row.backend = None
        row.doc.update(status="pending", reason=f"{row.doc['backend']} cannot run this {row.doc['precision']} "
                                                 f"graph here ({type(exc).__name__}); validate it on a GPU")
        log(f"PENDING {row.doc['name']}: {row.doc['reason']}")
        return True


def validate_run(run_dir: Path, artifacts: Sequence[str] = (), calibrate: bool = False, provider: str = "cpu",
                 quiet: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a run's artifacts, write eval/results.json and the reports, and return
    the results document (its `exit_code` is 0 when every gate holds, 1 otherwise)."""
    from richkd_deploy.evaluate.backends import TorchBackend
    from richkd_deploy.evaluate.report import write_reports
    from richkd_deploy.manifest import read_manifest

    run = RunDir(Path(run_dir))
    with run_lock(run.root, "validate"):
        payload = load_student_checkpoint(run.student, require_recipe=True)
        recipe: Recipe = from_dict(payload["recipe"], check_files=False)
        v = recipe.validate
        manifest = read_manifest(run.export_dir) if run.manifest.exists() else None
        if calibrate:
            if manifest is None:
                raise ArtifactError("--calibrate needs an export: run richkd-deploy export first")
            from richkd_deploy.evaluate.calibrate import add_calibrated_model

            manifest = add_calibrated_model(run, payload, recipe, manifest, log)

        ds = build_eval_datasets(recipe, test_limit=v.test_limit)
        mean, std = payload["mean"], payload["std"]
        size = recipe.data.input_size
        test_u8 = ds.test.uint8_batch(np.arange(len(ds.test)), size=size)
        labels = np.asarray(ds.test.labels, dtype=np.int64)[: len(test_u8)]
        test_x = _normalise(test_u8, mean, std)
        _check_input_shape(test_x, payload)
        holdout_x = holdout_y = None
        if ds.holdout is not None:
            holdout_x = _normalise(ds.holdout.uint8_batch(np.arange(len(ds.holdout)), size=size), mean, std)
            holdout_y = np.asarray(ds.holdout.labels, dtype=np.int64)

        rows = [_Row("torch-fp32", "student", str(run.student), TorchBackend(run.student),
                     "torch", "fp32")]
        teacher = payload.get("teacher")
        if teacher and teacher.get("checkpoint") and Path(teacher["checkpoint"]).exists():
            rows.append(_Row("teacher", "teacher", teacher["checkpoint"],
                             TorchBackend(Path(teacher["checkpoint"]), arch=teacher["arch"],
                                          num_classes=payload["num_classes"]), "torch", "fp32"))
        rows += _artifact_rows(run, manifest, artifacts, provider, log)
        bs = v.batch_size

        log(f"validate: {len(rows)} models on {len(labels)} clean test images")
        for row in rows:
            if row.backend is None or (row.doc["precision"] == "fp16" and _pending_fp16_on_cpu(row, test_x, log)):
                continue
            t0 = time.perf_counter()
            row.logits = predict_all(row.backend, test_x, bs)
            row.doc["clean"] = clean_metrics(row.logits, labels, v.confidence_threshold)
            hold = predict_all(row.backend, holdout_x, bs) if holdout_x is not None else None
            row.doc["calibration"] = calibration(hold, holdout_y, row.logits, labels)
            row.doc["seconds"] += time.perf_counter() - t0
        ref = {r.doc["role"]: r for r in rows if r.logits is not None and r.doc["role"] in ("student", "teacher")}
        for row in rows:
            if row.logits is None:
                continue
            row.doc["agreement"] = {
                role: (metrics.agreement(ref[role].logits, row.logits) if role in ref else None)
                for role in ("student", "teacher")}
            row.doc["top1_drop"] = (metrics.top1_drop_interval(ref["student"].logits, row.logits, labels)
                                    if "student" in ref else None)

        corr_info = _corruption_suite(rows, ds.test, recipe, mean, std, bs, quiet, log)
        docs = [r.doc for r in rows]
        gate_results = [gates_mod.clip_gate(bool(payload.get("clip_random")), v.allow_random_clip),
                        *gates_mod.evaluate_gates(docs, v.gates)]
        code = gates_mod.exit_code(gate_results)
        results = {
            "schema": SCHEMA, "run": str(run.root), "recipe_hash": payload.get("recipe_hash"),
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "version": __version__,
            "clip_random": bool(payload.get("clip_random")),
            "dataset": {"name": recipe.data.dataset, "test_samples": int(len(labels)), **corr_info},
            "rows": docs, "gates": gate_results, "exit_code": code,
        }
        atomic_write_json(run.eval_dir / "results.json", _jsonable(results))
        write_reports(results, run.eval_dir)
        for line in gates_mod.summarize(gate_results).splitlines():
            log(line)
        log(f"validate: {'every gate holds' if code == 0 else 'a gate failed'}; report: {run.eval_dir / 'report.html'}")
        return results


def _check_input_shape(test_x: np.ndarray, payload: dict[str, Any]) -> None:
    want = (payload.get("channels", 3), payload["input_size"], payload["input_size"])
    if tuple(test_x.shape[1:]) != want:
        raise ArtifactError(f"the test images are {tuple(test_x.shape[1:])} but the model expects {want}; "
                            "check data.dataset and data.input_size")


def _corruption_suite(rows: list[_Row], test_ds: Any, recipe: Recipe, mean: Sequence[float], std: Sequence[float],
                      batch_size: int, quiet: bool, log: Callable[[str], None]) -> dict[str, Any]:
    c = recipe.validate.corruptions
    names = list(c.names) if c.names else list(corr.CORRUPTIONS)
    unknown = [n for n in names if n not in corr.CORRUPTIONS + corr.EXTRA_CORRUPTIONS]
    if unknown:
        raise RichKDError(f"validate.corruptions.names: unknown {unknown}; choose from {', '.join(corr.CORRUPTIONS)}")
    live = [r for r in rows if r.logits is not None]
    n = min(c.samples, len(test_ds))
    idx = np.random.default_rng(c.seed).choice(len(test_ds), size=n, replace=False) if n < len(test_ds) \
        else np.arange(len(test_ds))
    idx.sort()
    clean_u8 = test_ds.uint8_batch(idx, size=recipe.data.input_size)
    labels = np.asarray(test_ds.labels, dtype=np.int64)[idx]
    cells = [(name, s) for name in names for s in c.severities]
    bar = tqdm(cells, desc="corruptions", disable=quiet, leave=False)
    for name, severity in bar:
        if c.source:
            images, cell_labels = corr.load_published(Path(c.source), name, severity, n=n,
                                                      classes=test_ds.classes, size=recipe.data.input_size)
        else:
            images, cell_labels = corr.corrupt(clean_u8, name, severity, seed=c.seed), labels
        x = _normalise(images, mean, std)
        for row in live:
            t0 = time.perf_counter()
            pred = metrics.predictions(predict_all(row.backend, x, batch_size))
            row.corr_correct.setdefault(name, {})[str(severity)] = float((pred == cell_labels).mean())
            row.doc["seconds"] += time.perf_counter() - t0
    bar.close()
    for row in live:
        accs = [a for per in row.corr_correct.values() for a in per.values()]
        row.doc["corruptions"] = {"accuracy": row.corr_correct, "mean_accuracy": float(np.mean(accs)) if accs else None}
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
