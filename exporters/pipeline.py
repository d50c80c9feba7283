"""`richkd-deploy export`: student.pt -> ONNX FP32/INT8/FP16 (+ TensorRT engines) + manifest.

The steps live in their own modules: `inputs` (the images), `stage_onnx` and
`stage_engine` (what is built and checked), `commit` (the crash-safe commit protocol:
a manifest never lists a partial file). This module loads the run and runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from exporters.commit import staging
from exporters.inputs import Corrupt, ExportData, build_export_data
from exporters.stage_engine import export_engine_stage
from exporters.stage_onnx import export_onnx_stage
from richkd_deploy.deps import TRT_MISSING, available
from richkd_deploy.errors import ArtifactError, MissingDependencyError, RecipeError
from richkd_deploy.manifest import Manifest, check_can_export
from richkd_deploy.recipe import ExportConfig, GatesConfig
from richkd_deploy.runs import RunDir, run_lock
from richkd_deploy.student import Student, load_student

Log = Callable[[str], None]


def export_student(student: Student, data: ExportData, export_dir: Path, cfg: ExportConfig, *,
                   trt: bool = False, force: bool = False, device: str = "cpu", quiet: bool = False,
                   log: Log = print, gates: GatesConfig | None = None,
                   int8_student: Student | None = None) -> Manifest:
    """Export `student` into `export_dir` as the recipe's `export` section says; the core
    of `export_run`, free of run-folder handling so tests drive it with tiny models and arrays.
    `int8_student`: QAT weights model.int8.onnx is made from (see stage_onnx)."""
    export_dir = Path(export_dir)
    check_can_export(export_dir, force)
    if trt and "int8" in cfg.precisions and not cfg.int8.symmetric_activations:
        raise RecipeError("export.int8.symmetric_activations: false gives non-zero zero points, which TensorRT "
                          "rejects; set it to true for --trt, or export without --trt")
    if trt and "int8" in cfg.precisions and cfg.int8.layout == "cpu":
        raise RecipeError("export.int8.layout: cpu folds each Relu into a uint8 QuantizeLinear, which TensorRT "
                          "rejects; set it to auto or tensorrt for --trt, or export without --trt")
    cfg = replace(cfg, int8=replace(cfg.int8, layout=cfg.int8.resolved_layout(trt)))
    with staging(export_dir) as folder:
        manifest = export_onnx_stage(student, data, export_dir, folder, cfg, device, quiet, log, gates=gates,
                                     int8_student=int8_student)
        if trt:
            if not available("tensorrt"):
                raise MissingDependencyError(TRT_MISSING)
            manifest = export_engine_stage(student, data, manifest, folder, cfg, device, quiet, log)
        return manifest


def export_run(run_dir: Path, trt: bool = False, force: bool = False, device: str = "cpu", quiet: bool = False,
               log: Log = print, corrupt: Corrupt | None = None, qat_student: Path | None = None) -> dict[str, Any]:
    """The `richkd-deploy export [RUN] [--trt] [--force] [--qat]` command. Returns the manifest.

    `qat_student`: a QAT fine-tune of this run's student (`RUN/qat/student_qat.pt`, written by
    `richkd_deploy.train.qat`; the CLI runs it, since exporters/ does not import train/):
    model.int8.onnx is made from its weights, and its manifest entry carries its `qat` record.

    `corrupt` is validate's corruption function, for `export.int8.calibration_corruptions`:
    the CLI passes it in because exporters/ does not import evaluate/.

    Raises ArtifactError (existing export without --force, parity failure),
    CheckpointError, DataError, RunError (run locked), MissingDependencyError (--trt
    without TensorRT: raised after the ONNX artifacts and manifest are written).
    """
    run = RunDir(Path(run_dir))
    with run_lock(run.root, "export"):
        check_can_export(run.export_dir, force)
        student = load_student(run.student)
        recipe = student.recipe()
        log(f"[export] run {run.root}: {student.meta['arch']} on {recipe.data.dataset}, "
            f"precisions {', '.join(recipe.export.precisions)}{', TensorRT engines' if trt else ''}")
        qat = None
        if qat_student is not None:
            qat = load_student(qat_student)
            made_from = (qat.meta.get("qat") or {}).get("source_student_sha256")
            if made_from != student.sha256:
                raise ArtifactError(f"{qat_student} was not fine-tuned from this run's student.pt (it was retrained "
                                    "since); run export --qat again to redo the QAT")
            if "int8" not in recipe.export.precisions:
                raise RecipeError("export --qat makes model.int8.onnx, but export.precisions has no int8; add it")
        data = build_export_data(recipe, student.meta, corrupt)
        if device != "cpu":
            torch.backends.cuda.matmul.allow_tf32 = False  # parity reference in true FP32
            torch.backends.cudnn.allow_tf32 = False
            student.view.to(device)
        return export_student(student, data, run.export_dir, recipe.export, trt=trt, force=force, device=device,
                              quiet=quiet, log=log, gates=recipe.validate.gates, int8_student=qat)
