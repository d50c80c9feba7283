"""The models validate evaluates, one row each: the torch student and teacher as
references, then every exported artifact through its runtime.

A row is "pending" only when its runtime is absent on this machine (TensorRT not
installed, no CUDA: a `MissingDependencyError`); an artifact that raises in an
installed runtime is an "error" row, whose gates fail with the error in the message.
A crash must never read as "not checked here". A file named with `--artifact` that
does not run is bad user input instead (the wrong file for this data): its error is
raised as before, one line, exit 2.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from richkd_deploy.errors import MissingDependencyError
from richkd_deploy.evaluate import metrics
from richkd_deploy.manifest import Manifest
from richkd_deploy.runs import RunDir
from richkd_deploy.runtime import TorchRuntime, agreement, create_runtime, predict_all, top1

Log = Callable[[str], None]


class Row:
    """One evaluated model: its runtime (None when pending or failed) and its results so far."""

    def __init__(self, name: str, role: str, file: str, runtime: Any, runtime_name: str, precision: str,
                 reason: str | None = None, user_given: bool = False) -> None:
        self.runtime = runtime
        self.user_given = user_given
        self.logits: np.ndarray | None = None
        self.corr_correct: dict[str, dict[str, float]] = {}
        self.predict_fn: Callable[[Any, np.ndarray, int], np.ndarray] = predict_all  # evaluate.distributed swaps it
        self.doc: dict[str, Any] = {"name": name, "role": role, "file": file, "backend": runtime_name,
                                    "precision": precision, "status": "ok" if runtime is not None else "pending",
                                    "reason": reason, "clean": None, "agreement": None, "calibration": None,
                                    "corruptions": None, "seconds": 0.0}
        if runtime is not None and runtime.details():
            self.doc["runtime"] = runtime.details()

    def predict(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.predict_fn(self.runtime, images, batch_size)
        finally:
            self.doc["seconds"] += time.perf_counter() - t0

    def give_up(self, exc: BaseException, log: Log) -> None:
        """Stop evaluating this row: pending when the runtime is absent, an error otherwise."""
        self.runtime, self.logits = None, None
        if isinstance(exc, MissingDependencyError):
            self.doc.update(status="pending", reason=str(exc))
            log(f"PENDING {self.doc['name']}: {exc}")
            return
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        self.doc.update(status="error", clean=None, agreement=None, calibration=None, corruptions=None,
                        reason=f"{self.doc['backend']} raised {type(exc).__name__} running this "
                               f"{self.doc['precision']} artifact: {first}")
        log(f"ERROR {self.doc['name']}: {self.doc['reason']}")


def reference_rows(run: RunDir, meta: dict[str, Any]) -> list[Row]:
    """The torch student (the gates' reference) and, when its checkpoint is still there, the teacher."""
    rows = [Row("torch-fp32", "student", str(run.student), TorchRuntime(run.student), "torch", "fp32")]
    teacher = meta.get("teacher")
    if teacher and teacher.get("checkpoint") and Path(teacher["checkpoint"]).exists():
        rows.append(Row("teacher", "teacher", teacher["checkpoint"],
                        TorchRuntime(Path(teacher["checkpoint"]), arch=teacher["arch"],
                                     num_classes=meta["num_classes"]), "torch", "fp32"))
    return rows


def _precision_of(name: str, entry: dict[str, Any]) -> str:
    return entry.get("precision") or ("int8" if ".int8." in name else "fp16" if ".fp16." in name else "fp32")


def sensitivity_doc(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The per-layer INT8 sensitivity table that export recorded in this artifact's
    manifest entry (`int8_tuning.sensitivity`, plain JSON), with the holdout FP32 top-1
    it is measured against, for the report's plot; None when export made no table."""
    tuning = entry.get("int8_tuning") if isinstance(entry, dict) else None
    table = tuning.get("sensitivity") if isinstance(tuning, dict) else None
    if not isinstance(table, list) or not table:
        return None
    holdout = tuning.get("holdout")
    return {"fp32_top1": holdout.get("fp32_top1") if isinstance(holdout, dict) else None, "layers": table}


def artifact_rows(run: RunDir, manifest: Manifest | None, artifacts: Sequence[str], provider: str,
                  runtime: str | None, log: Log) -> list[Row]:
    """A row per exported artifact (or per `--artifact`), each sha256-checked as its runtime is created."""
    if artifacts:
        files = [Path(a) for a in artifacts]
        entries: dict[str, dict[str, Any]] = {}
    elif manifest is not None:
        entries = {e["file"]: e for e in manifest["artifacts"] if str(e["file"]).endswith((".onnx", ".engine"))}
        files = [run.export_dir / f for f in entries]
    else:
        log("no export/manifest.json: evaluating the torch student only (run richkd-deploy export first)")
        return []
    rows = []
    for path in files:
        precision = _precision_of(path.name, entries.get(path.name, {}))
        is_engine = path.suffix == ".engine"
        name = "tensorrt" if is_engine else (f"{runtime}-{provider}" if runtime else f"onnxruntime-{provider}")
        try:
            rt = create_runtime(path if path.is_absolute() or artifacts else run.export_dir / path.name,
                                provider=None if is_engine else provider, manifest=manifest,
                                runtime=None if is_engine else runtime)
            rows.append(Row(path.name, "artifact", str(path), rt, rt.name if runtime and not is_engine else name,
                            precision, user_given=bool(artifacts)))
            if (sens := sensitivity_doc(entries.get(path.name, {}))) is not None:
                rows[-1].doc["int8_sensitivity"] = sens
        except MissingDependencyError as exc:
            rows.append(Row(path.name, "artifact", str(path), None, name, precision, reason=str(exc)))
            log(f"PENDING {path.name}: {exc}")
    return rows


def clean_metrics(logits: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Clean-test metrics of one row; top-1 is `runtime.top1`, the figure export reports too."""
    k = logits.shape[1]
    return {
        "top1": top1(logits, labels),
        "top5": metrics.top_k_accuracy(logits, labels, k=min(5, k)),
        "nll": metrics.nll(logits, labels),
        "brier": metrics.brier(logits, labels),
        "ece": metrics.ece(logits, labels, n_bins=15),
        "mce": metrics.mce(logits, labels, n_bins=15),
        "adaptive_ece": metrics.adaptive_ece(logits, labels, n_bins=15),
        "reliability": metrics.reliability_diagram(logits, labels, n_bins=15),
        "confidence": metrics.confidence_analysis(logits, labels, threshold),
        "confidence_hist": metrics.confidence_histogram(logits, labels),
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


def agreement_doc(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """How closely a row reproduces a reference row: the divergences of
    `metrics.agreement`, with the top-1 agreement from `runtime.agreement`, the one
    function export uses too (so the two commands cannot disagree on it)."""
    return {**metrics.agreement(reference, logits), "top1_agreement": agreement(reference, logits)}


def evaluate_clean(rows: list[Row], test_x: np.ndarray, labels: np.ndarray, holdout_x: np.ndarray | None,
                   holdout_y: np.ndarray | None, batch_size: int, threshold: float, log: Log) -> None:
    """Clean-test metrics and calibration of every live row; a row whose runtime raises
    is given up (pending or error, see `Row.give_up`) and the others go on."""
    for row in rows:
        if row.runtime is None:
            continue
        try:
            row.logits = row.predict(test_x, batch_size)
            hold = row.predict(holdout_x, batch_size) if holdout_x is not None else None
        except MissingDependencyError as exc:
            row.give_up(exc, log)
            continue
        except Exception as exc:  # noqa: BLE001 - any runtime failure is this artifact's verdict, not a crash
            if row.doc["role"] != "artifact" or row.user_given:
                raise
            row.give_up(exc, log)
            continue
        row.doc["clean"] = clean_metrics(row.logits, labels, threshold)
        row.doc["calibration"] = calibration(hold, holdout_y, row.logits, labels)
    ref = {r.doc["role"]: r for r in rows if r.logits is not None and r.doc["role"] in ("student", "teacher")}
    for row in rows:
        if row.logits is not None:
            row.doc["agreement"] = {role: (agreement_doc(ref[role].logits, row.logits) if role in ref else None)
                                    for role in ("student", "teacher")}
            row.doc["top1_drop"] = (metrics.top1_drop_interval(ref["student"].logits, row.logits, labels)
                                    if "student" in ref else None)
