"""The TensorRT stage of `richkd-deploy export --trt` (needs tensorrt and a GPU).

Engines are built from the committed FP16 / Q/DQ ONNX files, run through the same
`richkd_deploy.runtime` TensorRT runtime validate uses (sidecar checked first, batches
split and padded to the profile), and appended to the export with the commit protocol's
second commit, so a failed engine build never costs the ONNX artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporters import formats as F
from exporters import tensorrt_build
from exporters.commit import append
from exporters.inputs import ExportData, array_batches
from exporters.onnx_fp32 import INPUT_NAME
from exporters.parity import measure
from exporters.stage_onnx import accuracy_entry
from exporters.trt_plan import profile_from_recipe
from richkd_deploy.manifest import Manifest, artifact_entry
from richkd_deploy.recipe import ExportConfig
from richkd_deploy.runtime import TensorRTRuntime, TorchRuntime, predict_all
from richkd_deploy.runtime import tensorrt as trt_runtime
from richkd_deploy.runtime.engine_sidecar import sidecar_path
from richkd_deploy.student import Student

Log = Callable[[str], None]
TIMING_CACHE = "timing.cache"


def _check_engine(engine_path: Path, fmt: F.Format, env: Any, reference: TorchRuntime, student_logits: Any,
                  data: ExportData, cfg: ExportConfig, log: Log) -> list[dict[str, Any]]:
    """Parity vs PyTorch and test accuracy of one built engine; its two manifest entries."""
    staging = engine_path.parent
    with TensorRTRuntime(engine_path, env) as engine:
        parity = measure(reference.predict, engine.predict,
                         array_batches(data.test_x, data.batch_size, cfg.parity_images))
        logits = predict_all(engine, data.test_x, data.batch_size, finite=False)
    accuracy = accuracy_entry(logits, data, student_logits)
    log(f"[export] {fmt.file}: top-1 {accuracy['top1']:.4f}, max |logit diff| vs PyTorch "
        f"{parity.max_abs_diff:.2e}, agreement {parity.top1_agreement:.4f}")
    side = sidecar_path(fmt.file).name
    return [artifact_entry(staging, fmt.file, "engine", fmt.precision, source=F.get_format(fmt.source).file,
                           parity={**parity.to_dict(), "reference": "pytorch"}, accuracy=accuracy,
                           extra={"sidecar": side}),
            artifact_entry(staging, side, "engine-sidecar", fmt.precision, source=fmt.file)]


def export_engine_stage(student: Student, data: ExportData, manifest: Manifest, staging: Path, cfg: ExportConfig,
                        device: str, quiet: bool, log: Log) -> Manifest:
    """Build, check and commit the TensorRT engines of `cfg.precisions`."""
    export_dir = manifest.export_dir
    env = trt_runtime.running_env()
    profile = profile_from_recipe(cfg.trt, student.input_shape, INPUT_NAME)
    reference = TorchRuntime(student.view, device)
    student_logits = predict_all(reference, data.test_x, data.batch_size, finite=False)
    entries: list[dict[str, Any]] = []
    for fmt in F.engine_formats(cfg.precisions):
        source = export_dir / F.get_format(fmt.source).file
        log(f"[export] {fmt.file}: building TensorRT {env.tensorrt_version} engine on {env.gpu_name} "
            f"(batch {profile.min[0]}..{profile.max[0]}, opt {profile.opt[0]}) from {source.name}")
        engine_path, _ = tensorrt_build.build_engine(source, fmt.precision, profile, staging / fmt.file,
                                                     workspace_mb=cfg.trt.workspace_mb,
                                                     timing_cache=export_dir / TIMING_CACHE, log=log)
        entries += _check_engine(engine_path, fmt, env, reference, student_logits, data, cfg, log)
    manifest = append(
        manifest, staging, entries,
        tools={**manifest["tools"], "tensorrt": env.tensorrt_version},
        device={**manifest.get("device", {}), "gpu": env.gpu_name, "compute_capability": env.compute_capability},
        trt={"timing_cache": TIMING_CACHE, "profile": profile.to_dict(), "workspace_mb": cfg.trt.workspace_mb})
    log(f"[export] wrote {manifest.path} ({len(manifest['artifacts'])} artifacts)")
    return manifest
