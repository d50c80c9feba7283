"""The ONNX stage of `richkd-deploy export`: FP32, then INT8 (Q/DQ) and FP16 from it.

Each artifact is written into the staging folder, run through `richkd_deploy.runtime`
on the test images (the same runtimes and prediction code as validate, so the two
commands report the same top-1 and agreement), recorded in a manifest entry, and
committed together with the manifest.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from exporters import formats as F
from exporters.commit import commit
from exporters.fp16 import convert_fp16
from exporters.golden import export_golden
from exporters.inputs import ExportData, array_batches, progress
from exporters.int8_coverage import activation_coverage
from exporters.int8_tune import Holdout, tune_int8
from exporters.metadata import build_metadata
from exporters.onnx_fp32 import INPUT_NAME, OUTPUT_NAME, export_onnx
from exporters.parity import ParityResult, check_parity
from richkd_deploy.manifest import Manifest, artifact_entry, build_manifest
from richkd_deploy.recipe import ExportConfig, GatesConfig
from richkd_deploy.runtime import TorchRuntime, agreement, create_runtime, predict_all, top1
from richkd_deploy.student import Student

Log = Callable[[str], None]


def holdout_for(data: ExportData, fp32: Path, gates: GatesConfig) -> Holdout | None:
    """The holdout images with their FP32 logits and the INT8 gates, or None without a holdout."""
    if data.holdout_x is None or data.holdout_y is None or len(data.holdout_y) == 0:
        return None
    with create_runtime(fp32, "cpu", manifest=False) as rt:
        ref = predict_all(rt, data.holdout_x, data.batch_size, finite=False)
    return Holdout(data.holdout_x, data.holdout_y, ref, gates.max_top1_drop, gates.min_agreement)


def coverage_summary(int8: Path, data: ExportData, log: Log) -> dict[str, Any]:
    """Share of holdout activations (clean and each calibration corruption) outside the
    calibrated ranges, overall and per quantized tensor."""
    sets = {"clean": data.holdout_x, **data.holdout_corrupted}
    cov = activation_coverage(int8, sets)
    log("[export] int8 calibration coverage (activations outside the calibrated ranges, holdout): "
        + ", ".join(f"{s} {cov[s]:.2e}" for s in sets))
    return {"images": "holdout", **cov}


def write_onnx_artifacts(student: Student, data: ExportData, staging: Path, cfg: ExportConfig,
                         log: Log, gates: GatesConfig | None = None,
                         records: dict[str, Any] | None = None, int8_student: Student | None = None) -> dict[str, Path]:
    """model.onnx, then the reduced-precision graphs derived from it; {precision: path}.
    `records` receives what the INT8 tuning recorded (for the manifest entry).

    `int8_student` (QAT, `export --qat`): model.int8.onnx is quantized from an FP32 graph of
    these weights (a staging file that is not committed) instead of model.onnx, through the
    same calibration, search and fallback; the holdout gates still compare it with model.onnx,
    the student the user trained."""
    fp32 = F.get_format("onnx")
    meta = build_metadata(student.payload, cfg.opset, INPUT_NAME, OUTPUT_NAME)
    log(f"[export] {fp32.file}: exporting {student.payload.get('arch', type(student.view).__name__)} "
        f"(opset {cfg.opset}, input {list(student.input_shape)}, dynamic batch)")
    export_onnx(student.view, staging / fp32.file, student.input_shape, cfg.opset, meta)
    paths = {"fp32": staging / fp32.file}
    q = cfg.int8
    n_cal = min(q.images(cfg.calibration_images), len(data.calibration_x))
    for fmt in F.onnx_formats(cfg.precisions):
        if fmt.precision == "int8":
            log(f"[export] {fmt.file}: Q/DQ int8 ({'symmetric' if q.symmetric_activations else 'asymmetric'} "
                f"activations, {'per-channel' if q.per_channel else 'per-tensor'} weights), "
                f"{'method search' if q.search else q.method} on {n_cal} training images, "
                f"{q.resolved_layout(trt=False)} layout")
            holdout = holdout_for(data, paths["fp32"], gates or GatesConfig())
            source = paths["fp32"]
            if int8_student is not None:
                source = staging / ".qat.fp32.onnx"
                export_onnx(int8_student.view, source, int8_student.input_shape, cfg.opset,
                            build_metadata(int8_student.payload, cfg.opset, INPUT_NAME, OUTPUT_NAME))
                log(f"[export] {fmt.file}: from the QAT weights ({int8_student.path})")
            calibration = np.concatenate([data.calibration_x[:n_cal],
                                          *(x[:n_cal] for x in data.calibration_corrupted.values())])
            if data.calibration_corrupted:
                log(f"[export] {fmt.file}: calibration set = clean + {', '.join(data.calibration_corrupted)} "
                    f"({len(calibration)} images)")
            record = tune_int8(source, calibration, staging / fmt.file, q, holdout, log)
            record["calibration_mix"] = ["clean", *data.calibration_corrupted]
            if holdout is not None:
                record["coverage"] = coverage_summary(staging / fmt.file, data, log)
            if records is not None:
                records["int8"] = record
            paths["int8"] = staging / fmt.file
        elif fmt.precision == "fp16":
            log(f"[export] {fmt.file}: FP16 weights and activations, FP32 inputs/outputs")
            convert_fp16(paths["fp32"], staging / fmt.file)
            paths["fp16"] = staging / fmt.file
    return paths


def parity_fp32(reference: TorchRuntime, data: ExportData, onnx_path: Path, cfg: ExportConfig,
                log: Log) -> ParityResult:
    """model.onnx against PyTorch on the first `parity_images` test images; raises when outside tolerance."""
    with create_runtime(onnx_path, "cpu", manifest=False) as candidate:
        result = check_parity(reference.predict, candidate.predict,
                              array_batches(data.test_x, data.batch_size, cfg.parity_images),
                              cfg.parity_atol, cfg.parity_min_agreement, what=onnx_path.name)
    log(f"[export] {onnx_path.name}: max |logit diff| vs PyTorch {result.max_abs_diff:.2e}, "
        f"top-1 agreement {result.top1_agreement:.4f} on {result.n} test images")
    return result


def evaluate_artifacts(paths: dict[str, Path], data: ExportData, quiet: bool,
                       log: Log) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Test-set logits of every ONNX artifact onnxruntime can run on the CPU, and the
    reason for each one it cannot (e.g. an FP16 op without a CPU kernel: recorded, not fatal)."""
    logits: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for precision, path in progress(paths.items(), len(paths), "export: test set", quiet):
        try:
            with create_runtime(path, "cpu", manifest=False) as rt:
                logits[precision] = predict_all(rt, data.test_x, data.batch_size, finite=False)
        except Exception as exc:  # noqa: BLE001 - whatever the runtime raises: record, don't fail
            skipped[precision] = f"not run: {str(exc).splitlines()[0]}"
            log(f"[export] {path.name}: onnxruntime CPU cannot run it ({skipped[precision]})")
    return logits, skipped


def accuracy_entry(logits: np.ndarray, data: ExportData, student_logits: np.ndarray) -> dict[str, Any]:
    """Test top-1 and agreement with the torch student: the figures validate reports for the same file."""
    return {"top1": top1(logits, data.test_y), "n": int(len(data.test_y)), "split": "test",
            "dataset": data.dataset, "agreement_with_student": agreement(student_logits, logits)}


def reduced_parity(precision: str, file: str, ref: np.ndarray, got: np.ndarray, data: ExportData,
                   log: Log) -> dict[str, Any]:
    """An INT8/FP16 artifact against model.onnx on the whole test set."""
    diff = np.abs(ref.astype(np.float64) - got)
    parity = {"reference": F.get_format("onnx").file, "max_abs_diff": float(diff.max(initial=0.0)),
              "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
              "top1_agreement": agreement(ref, got), "n": int(len(ref))}
    if precision == "int8":
        acc8, acc32 = top1(got, data.test_y), top1(ref, data.test_y)
        log(f"[export] {file}: top-1 {acc8:.4f} vs FP32 {acc32:.4f} ({(acc8 - acc32) * 100:+.2f} points), "
            f"agreement with FP32 {parity['top1_agreement']:.4f}")
    else:
        log(f"[export] {file}: max |logit diff| vs FP32 {parity['max_abs_diff']:.2e}, "
            f"agreement {parity['top1_agreement']:.4f}")
    return parity


def tool_device(device: str) -> dict[str, Any]:
    return {"export": device, "machine": platform.machine(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "gpu": None}


def qat_entry(qat: Student) -> dict[str, Any]:
    """The manifest's `qat` record of an INT8 artifact made from QAT weights."""
    return {**qat.meta.get("qat", {}), "student_qat": f"{qat.path.parent.name}/{qat.path.name}" if qat.path else None,
            "student_qat_sha256": qat.sha256}


def export_onnx_stage(student: Student, data: ExportData, export_dir: Path, staging: Path, cfg: ExportConfig,
                      device: str, quiet: bool, log: Log, recipe_hash: str | None = None,
                      gates: GatesConfig | None = None, int8_student: Student | None = None) -> Manifest:
    """Write, check and commit the ONNX artifacts and the manifest."""
    reference = TorchRuntime(student.view, device)
    records: dict[str, Any] = {}
    paths = write_onnx_artifacts(student, data, staging, cfg, log, gates, records, int8_student)
    parity32 = parity_fp32(reference, data, paths["fp32"], cfg, log)
    student_logits = predict_all(reference, data.test_x, data.batch_size, finite=False)
    logits, skipped = evaluate_artifacts(paths, data, quiet, log)
    entries: list[dict[str, Any]] = []
    for fmt in F.onnx_formats(cfg.precisions):
        precision, extra = fmt.precision, {}
        accuracy = accuracy_entry(logits[precision], data, student_logits) if precision in logits else None
        if precision == "fp32":
            parity: dict[str, Any] = {**parity32.to_dict(), "reference": "pytorch"}
            if accuracy:
                log(f"[export] {fmt.file}: test top-1 {accuracy['top1']:.4f} on {accuracy['n']} images")
        elif precision not in logits:
            parity = {"status": skipped.get(precision, "not run")}
        else:
            parity = reduced_parity(precision, fmt.file, logits["fp32"], logits[precision], data, log)
        if precision == "int8":
            record = dict(records.get("int8", {}))
            extra["quantization"] = {**record.pop("options", {}), "calibration_split": "train"}
            extra["int8_tuning"] = record
            if int8_student is not None:
                extra["qat"] = qat_entry(int8_student)
        entries.append(artifact_entry(staging, fmt.file, fmt.kind, precision,
                                      source=F.get_format(fmt.source).file if fmt.source else None,
                                      parity=parity, accuracy=accuracy, extra=extra))
    if data.test_dataset is not None and (
            golden := export_golden(staging, data.test_dataset, student.payload, paths, student.view, log)):
        entries.append(artifact_entry(staging, golden, "golden", "fp32", source=F.get_format("onnx").file))

    def make(entries_: list[dict[str, Any]]) -> Manifest:
        meta = student.payload
        return build_manifest(
            export_dir, entries_, opset=cfg.opset, recipe_hash=recipe_hash or meta.get("recipe_hash"),
            device=tool_device(device),
            extra={"input": {"name": INPUT_NAME, "shape": ["batch", *student.input_shape], "dtype": "float32"},
                   "output": {"name": OUTPUT_NAME, "shape": ["batch", len(meta.get("classes", []))]},
                   "arch": meta.get("arch"), "classes": list(meta.get("classes", [])),
                   "student_sha256": student.sha256, "dataset": data.dataset})

    manifest = commit(export_dir, staging, entries, make)
    log(f"[export] wrote {manifest.path} ({len(entries)} artifacts)")
    return manifest
