"""`richkd-deploy export`: student.pt -> ONNX FP32/INT8/FP16 (+ TensorRT engines) + manifest.

Crash safety. Every artifact is first built in `RUN/export/.staging-<pid>/`. Only
when all of them are built and checked does the commit happen: the old manifest is
withdrawn, the files are moved in with atomic renames, files of the replaced export
that the new one does not produce are deleted, and the new manifest is written last
(atomically). A `kill -9` at any moment therefore leaves the old complete export,
no manifest, or the new complete export; a manifest never lists a partial file.
Engines are a second commit of the same shape (move in, then rewrite the manifest),
so a missing TensorRT or a failed engine build never costs the ONNX artifacts.
Leftover staging folders are removed on the next export (the run lock guarantees
no other export is using them).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exporters import formats as F
from exporters.deps import TRT_MISSING, available
from exporters.fp16 import convert_fp16
from exporters.int8 import QUANT_SETTINGS, quantize_int8
from exporters.metadata import build_metadata
from exporters.onnx_fp32 import INPUT_NAME, OUTPUT_NAME, export_onnx
from exporters.ort_session import make_session, run_session
from exporters.parity import ParityResult, agreement, check_parity, measure, top1, torch_predictor
from richkd_deploy.errors import MissingDependencyError
from richkd_deploy.manifest import (
    Manifest,
    artifact_entry,
    build_manifest,
    check_can_export,
    remove_manifest,
    write_manifest,
)
from richkd_deploy.recipe import TrtConfig
from richkd_deploy.runs import RunDir, fsync_dir, run_lock

Log = Callable[[str], None]
TIMING_CACHE = "timing.cache"
EVAL_BATCH = 256


@dataclass
class LoadedStudent:
    """The logits-only module to export plus the checkpoint fields that describe it."""

    view: nn.Module
    payload: dict[str, Any]  # student.pt minus the weights
    sha256: str | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = int(self.payload["input_size"])
        return int(self.payload.get("channels", 3)), size, size


@dataclass
class ExportData:
    """Datasets yielding (float32 CHW tensor, label, ...) through the eval transform."""

    test: Any
    calibration: Any
    dataset: str = ""


@dataclass
class ExportSettings:
    opset: int = 17
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    calibration_images: int = 512
    parity_atol: float = 1e-4
    parity_min_agreement: float = 1.0
    parity_images: int = 256
    trt_min_batch: int = 1
    trt_opt_batch: int = 32
    trt_max_batch: int = 64
    trt_workspace_mb: int = 1024
    recipe_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_recipe(cls, recipe: Any) -> ExportSettings:
        e = recipe.export
        return cls(opset=e.opset, precisions=tuple(e.precisions), calibration_images=e.calibration_images,
                   parity_atol=e.parity_atol, parity_min_agreement=e.parity_min_agreement,
                   parity_images=e.parity_images, trt_min_batch=e.trt.min_batch, trt_opt_batch=e.trt.opt_batch,
                   trt_max_batch=e.trt.max_batch, trt_workspace_mb=e.trt.workspace_mb)


# ----------------------------------------------------------------------------- data


def iter_batches(dataset: Any, batch_size: int = EVAL_BATCH, limit: int | None = None,
                 with_labels: bool = True) -> Iterator[Any]:
    """(images float32 NCHW, labels int64) numpy batches, in dataset order."""
    n = len(dataset) if limit is None else min(len(dataset), int(limit))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)) if n < len(dataset) else dataset,
                                         batch_size=batch_size, shuffle=False, num_workers=0)
    for batch in loader:
        x = batch[0].numpy().astype(np.float32, copy=False)
        if with_labels:
            yield x, np.asarray(batch[1], dtype=np.int64)
        else:
            yield x


def _progress(iterable: Iterable[Any], total: int, desc: str, quiet: bool) -> Iterable[Any]:
    if quiet:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


# ----------------------------------------------------------------------------- commit protocol


def _staging_dir(export_dir: Path) -> Path:
    return export_dir / f".staging-{os.getpid()}"


def clean_staging(export_dir: Path) -> None:
    """Remove staging folders left by killed exports (we hold the run lock, so none is live)."""
    if export_dir.is_dir():
        for p in export_dir.glob(".staging-*"):
            shutil.rmtree(p, ignore_errors=True)


def _move_in(staging: Path, export_dir: Path, names: Iterable[str]) -> None:
    for name in names:
        os.replace(staging / name, export_dir / name)
    fsync_dir(export_dir)


def commit(export_dir: Path, staging: Path, entries: list[dict[str, Any]],
           make_manifest: Callable[[list[dict[str, Any]]], Manifest]) -> Manifest:
    """Withdraw the old manifest, move the staged files in, delete files only the old
    export had, and write the new manifest last."""
    old = remove_manifest(export_dir)
    _move_in(staging, export_dir, [e["file"] for e in entries])
    new_files = {e["file"] for e in entries}
    if old is not None:
        for stale in old.get("artifacts", []):
            if stale["file"] not in new_files:
                with contextlib.suppress(OSError):
                    (export_dir / stale["file"]).unlink()
    return write_manifest(make_manifest(entries))


# ----------------------------------------------------------------------------- steps


def _parity_fp32(student: LoadedStudent, data: ExportData, onnx_path: Path, s: ExportSettings, device: str,
                 log: Log) -> ParityResult:
    session = make_session(onnx_path, "cpu")
    result = check_parity(torch_predictor(student.view, device), lambda b: run_session(session, b),
                          iter_batches(data.test, EVAL_BATCH, s.parity_images, with_labels=False),
                          s.parity_atol, s.parity_min_agreement, what=onnx_path.name)
    log(f"[export] {onnx_path.name}: max |logit diff| vs PyTorch {result.max_abs_diff:.2e}, "
        f"top-1 agreement {result.top1_agreement:.4f} on {result.n} test images")
    return result


def _evaluate_onnx(paths: dict[str, Path], data: ExportData, quiet: bool, log: Log) -> dict[str, Any]:
    """One pass over the test set through every ONNX artifact that onnxruntime can run
    on the CPU; returns logits per precision (or the reason it could not run)."""
    sessions: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for precision, path in paths.items():
        try:
            sessions[precision] = make_session(path, "cpu")
        except Exception as exc:  # noqa: BLE001 - e.g. an FP16 op without a CPU kernel: record, don't fail
            skipped[precision] = f"not run: {str(exc).splitlines()[0]}"
            log(f"[export] {path.name}: onnxruntime CPU cannot run it ({skipped[precision]})")
    logits: dict[str, list[np.ndarray]] = {k: [] for k in sessions}
    labels: list[np.ndarray] = []
    total = (len(data.test) + EVAL_BATCH - 1) // EVAL_BATCH
    for x, y in _progress(iter_batches(data.test), total, "export: test set", quiet):
        labels.append(y)
        for precision, session in sessions.items():
            logits[precision].append(run_session(session, x))
    out: dict[str, Any] = {"labels": np.concatenate(labels) if labels else np.zeros(0, np.int64), "skipped": skipped}
    out["logits"] = {k: np.concatenate(v) for k, v in logits.items() if v}
    return out


def _accuracy(logits: np.ndarray, labels: np.ndarray, dataset: str) -> dict[str, Any]:
    return {"top1": top1(logits, labels), "n": int(len(labels)), "split": "test", "dataset": dataset}


def _tool_device(device: str) -> dict[str, Any]:
    return {"export": device, "machine": platform.machine(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "gpu": None}


def export_student(student: LoadedStudent, data: ExportData, export_dir: Path, settings: ExportSettings, *,
                   trt: bool = False, force: bool = False, device: str = "cpu", quiet: bool = False,
                   log: Log = print) -> Manifest:
    """Export `student` into `export_dir`; the core of `export_run`, free of run-folder
    and checkpoint handling so tests can drive it with tiny models and arrays."""
    export_dir = Path(export_dir)
    check_can_export(export_dir, force)
    export_dir.mkdir(parents=True, exist_ok=True)
    clean_staging(export_dir)
    staging = _staging_dir(export_dir)
    staging.mkdir()
    try:
        manifest = _export_onnx_stage(student, data, export_dir, staging, settings, device, quiet, log)
        if trt:
            if not available("tensorrt"):
                raise MissingDependencyError(TRT_MISSING)
            manifest = _export_engine_stage(student, data, manifest, staging, settings, device, quiet, log)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_onnx_stage(student: LoadedStudent, data: ExportData, export_dir: Path, staging: Path,
                       s: ExportSettings, device: str, quiet: bool, log: Log) -> Manifest:
    formats = F.onnx_formats(s.precisions)
    meta = build_metadata(student.payload, s.opset, INPUT_NAME, OUTPUT_NAME)
    fp32 = F.get_format("onnx")
    log(f"[export] {fp32.file}: exporting {student.payload.get('arch', type(student.view).__name__)} "
        f"(opset {s.opset}, input {list(student.input_shape)}, dynamic batch)")
    export_onnx(student.view, staging / fp32.file, student.input_shape, s.opset, meta)
    parity32 = _parity_fp32(student, data, staging / fp32.file, s, device, log)

    paths = {"fp32": staging / fp32.file}
    for fmt in formats:
        if fmt.precision == "int8":
            log(f"[export] {fmt.file}: Q/DQ int8 (symmetric, per-channel), calibrating on "
                f"{min(s.calibration_images, len(data.calibration))} training images")
            quantize_int8(paths["fp32"], iter_batches(data.calibration, 64, s.calibration_images, with_labels=False),
                          staging / fmt.file)
            paths["int8"] = staging / fmt.file
        elif fmt.precision == "fp16":
            log(f"[export] {fmt.file}: FP16 weights and activations, FP32 inputs/outputs")
            convert_fp16(paths["fp32"], staging / fmt.file)
            paths["fp16"] = staging / fmt.file

    results = _evaluate_onnx(paths, data, quiet, log)
    labels, logits = results["labels"], results["logits"]
    entries: list[dict[str, Any]] = []
    for fmt in formats:
        precision = fmt.precision
        parity: dict[str, Any] | None
        accuracy: dict[str, Any] | None = None
        extra: dict[str, Any] = {}
        if precision in logits:
            accuracy = _accuracy(logits[precision], labels, data.dataset)
        if precision == "fp32":
            parity = {**parity32.to_dict(), "reference": "pytorch"}
        elif precision not in logits:
            parity = {"status": results["skipped"].get(precision, "not run")}
        else:
            ref = logits["fp32"]
            diff = np.abs(ref.astype(np.float64) - logits[precision])
            parity = {"reference": fp32.file, "max_abs_diff": float(diff.max(initial=0.0)),
                      "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
                      "top1_agreement": agreement(ref, logits[precision]), "n": int(len(ref))}
            if precision == "int8":
                extra["quantization"] = {**QUANT_SETTINGS,
                                         "calibration_images": min(s.calibration_images, len(data.calibration)),
                                         "calibration_split": "train"}
                acc8, acc32 = top1(logits["int8"], labels), top1(ref, labels)
                log(f"[export] {fmt.file}: top-1 {acc8:.4f} vs FP32 {acc32:.4f} ({(acc8 - acc32) * 100:+.2f} points), "
                    f"agreement with FP32 {parity['top1_agreement']:.4f}")
            else:
                log(f"[export] {fmt.file}: max |logit diff| vs FP32 {parity['max_abs_diff']:.2e}, "
                    f"agreement {parity['top1_agreement']:.4f}")
        if precision == "fp32" and accuracy:
            log(f"[export] {fmt.file}: test top-1 {accuracy['top1']:.4f} on {accuracy['n']} images")
        entries.append(artifact_entry(staging, fmt.file, fmt.kind, precision,
                                      source=F.get_format(fmt.source).file if fmt.source else None,
                                      parity=parity, accuracy=accuracy, extra=extra))

    def make(entries_: list[dict[str, Any]]) -> Manifest:
        return build_manifest(
            export_dir, entries_, opset=s.opset, recipe_hash=s.recipe_hash or student.payload.get("recipe_hash"),
            device=_tool_device(device),
            extra={"input": {"name": INPUT_NAME, "shape": ["batch", *student.input_shape], "dtype": "float32"},
                   "output": {"name": OUTPUT_NAME, "shape": ["batch", len(student.payload.get("classes", []))]},
                   "arch": student.payload.get("arch"), "classes": list(student.payload.get("classes", [])),
                   "student_sha256": student.sha256, "dataset": data.dataset, **s.extra})

    manifest = commit(export_dir, staging, entries, make)
    log(f"[export] wrote {manifest.path} ({len(entries)} artifacts)")
    return manifest


def _export_engine_stage(student: LoadedStudent, data: ExportData, manifest: Manifest, staging: Path,
                         s: ExportSettings, device: str, quiet: bool, log: Log) -> Manifest:
    """Build, check and commit the TensorRT engines (needs tensorrt and a GPU)."""
    from exporters.engine_sidecar import sidecar_path
    from exporters.tensorrt_build import build_engine
    from exporters.tensorrt_runtime import load_engine, running_env
    from exporters.trt_plan import profile_from_recipe, split_batches

    export_dir = manifest.export_dir
    env = running_env()
    trt_cfg = TrtConfig(min_batch=s.trt_min_batch, opt_batch=s.trt_opt_batch, max_batch=s.trt_max_batch,
                        workspace_mb=s.trt_workspace_mb)
    profile = profile_from_recipe(trt_cfg, student.input_shape, INPUT_NAME)
    entries: list[dict[str, Any]] = []
    for fmt in F.engine_formats(s.precisions):
        source = export_dir / F.get_format(fmt.source).file
        log(f"[export] {fmt.file}: building TensorRT {env.tensorrt_version} engine on {env.gpu_name} "
            f"(batch {profile.min[0]}..{profile.max[0]}, opt {profile.opt[0]}) from {source.name}")
        engine_path, sidecar = build_engine(source, fmt.precision, profile, staging / fmt.file,
                                            workspace_mb=s.trt_workspace_mb,
                                            timing_cache=export_dir / TIMING_CACHE, log=log)
        engine = load_engine(engine_path, env)
        ref = torch_predictor(student.view, device)

        def run_engine(batch: np.ndarray, engine: Any = engine) -> np.ndarray:
            outs = [engine.infer(torch.from_numpy(batch[sl])).float().cpu().numpy()
                    for sl in split_batches(len(batch), engine.profile.max_batch)]
            return np.concatenate(outs)

        parity = measure(ref, run_engine, iter_batches(data.test, EVAL_BATCH, s.parity_images, with_labels=False))
        preds, labels = [], []
        total = (len(data.test) + EVAL_BATCH - 1) // EVAL_BATCH
        for x, y in _progress(iter_batches(data.test), total, f"export: {fmt.file}", quiet):
            preds.append(run_engine(x))
            labels.append(y)
        accuracy = _accuracy(np.concatenate(preds), np.concatenate(labels), data.dataset)
        log(f"[export] {fmt.file}: top-1 {accuracy['top1']:.4f}, max |logit diff| vs PyTorch "
            f"{parity.max_abs_diff:.2e}, agreement {parity.top1_agreement:.4f}")
        entries.append(artifact_entry(staging, fmt.file, "engine", fmt.precision, source=source.name,
                                      parity={**parity.to_dict(), "reference": "pytorch"}, accuracy=accuracy,
                                      extra={"sidecar": sidecar_path(fmt.file).name}))
        entries.append(artifact_entry(staging, sidecar_path(fmt.file).name, "engine-sidecar", fmt.precision,
                                      source=fmt.file))
    _move_in(staging, export_dir, [e["file"] for e in entries])
    manifest["artifacts"] = [*manifest["artifacts"], *entries]
    manifest["tools"]["tensorrt"] = env.tensorrt_version
    manifest["device"] = {**manifest.get("device", {}), "gpu": env.gpu_name,
                          "compute_capability": env.compute_capability}
    manifest["trt"] = {"timing_cache": TIMING_CACHE, "profile": profile.to_dict(),
                       "workspace_mb": s.trt_workspace_mb}
    write_manifest(manifest)
    log(f"[export] wrote {manifest.path} ({len(manifest['artifacts'])} artifacts)")
    return manifest


# ----------------------------------------------------------------------------- run level


def load_student(path: Path) -> LoadedStudent:
    """Rebuild the exported module from `student.pt` (weights_only, strict)."""
    from richkd_deploy import models
    from richkd_deploy.runs import sha256_file

    payload = models.load_student_checkpoint(path)
    model = models.create_model(payload["arch"], num_classes=int(payload["num_classes"]))
    models.load_state_dict_strict(model, payload["model"], source=str(path))
    view = models.export_view(model).eval()
    info = {k: v for k, v in payload.items() if k != "model"}
    return LoadedStudent(view=view, payload=info, sha256=sha256_file(path))


def _recipe_of(run: RunDir, payload: dict[str, Any]) -> Any:
    """The recipe the student was trained with. Teacher paths are dropped first: the
    export does not need the teacher, and a moved teacher file must not block it."""
    from richkd_deploy import recipe as recipe_mod

    data = json.loads(json.dumps(payload.get("recipe") or {}))
    if isinstance(data.get("teacher"), dict):
        data["teacher"]["checkpoint"] = data["teacher"]["init"] = None
    if isinstance(data.get("student"), dict):
        data["student"]["init"] = None  # starting weights: done with once trained
    if data:
        return recipe_mod.from_dict(data, base_dir=run.root)
    return recipe_mod.load(run.recipe)


def build_export_data(recipe: Any, payload: dict[str, Any]) -> ExportData:
    """Test set (for parity and accuracy) and calibration images (from the training
    split, never the test or held-out images), both through the eval transform with
    the student's own normalisation."""
    from richkd_deploy import data
    from richkd_deploy.data.for_recipe import build_eval_datasets

    ds = build_eval_datasets(recipe)
    eval_t = data.eval_transform(int(payload["input_size"]), tuple(payload["mean"]), tuple(payload["std"]),
                                 crop_ratio=recipe.data.eval_crop_ratio)
    calibration = data.limit_dataset(ds.train, recipe.export.calibration_images, recipe.seed).with_transform(eval_t)
    return ExportData(test=ds.test.with_transform(eval_t), calibration=calibration, dataset=ds.dataset)


def export_run(run_dir: Path, trt: bool = False, force: bool = False, device: str = "cpu", quiet: bool = False,
               log: Log = print) -> dict[str, Any]:
    """The `richkd-deploy export [RUN] [--trt] [--force]` command. Returns the manifest.

    Raises ArtifactError (existing export without --force, parity failure),
    CheckpointError, DataError, RunError (run locked), MissingDependencyError (--trt
    without TensorRT: raised after the ONNX artifacts and manifest are written).
    """
    run = RunDir(Path(run_dir))
    with run_lock(run.root, "export"):
        check_can_export(run.export_dir, force)
        student = load_student(run.student)
        recipe = _recipe_of(run, student.payload)
        log(f"[export] run {run.root}: {student.payload['arch']} on {recipe.data.dataset}, "
            f"precisions {', '.join(recipe.export.precisions)}{', TensorRT engines' if trt else ''}")
        data = build_export_data(recipe, student.payload)
        settings = ExportSettings.from_recipe(recipe)
        settings.recipe_hash = student.payload.get("recipe_hash")
        if device != "cpu":
            torch.backends.cuda.matmul.allow_tf32 = False  # parity reference in true FP32
            torch.backends.cudnn.allow_tf32 = False
            student.view.to(device)
        return export_student(student, data, run.export_dir, settings, trt=trt, force=force, device=device,
                              quiet=quiet, log=log)
