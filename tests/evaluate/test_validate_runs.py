"""validate on a real exported run: one evaluation path with export, and crashes fail.

A small run (synthetic images, a random resnet8) is exported once per module; each
test works on its own copy of the run folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from exporters.pipeline import export_run
from richkd_deploy.deps import available
from richkd_deploy.evaluate.harness import validate_run
from richkd_deploy.manifest import add_artifact, read_manifest
from tests.exporters.helpers import make_run


def _quiet(_msg: str) -> None:
    pass


def _make_run(root: Path) -> Path:
    return make_run(root, recipe_data={
        "name": "exp", "data": {"dataset": "synthetic", "test_limit": 300, "train_limit": 300},
        "student": {"arch": "resnet8"}, "distill": {"method": "vanilla"},
        "export": {"calibration_images": 64, "parity_images": 64},
        "validate": {"batch_size": 128, "corruptions": {"names": ["gaussian_noise"], "severities": [1],
                                                        "samples": 40}}})


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run = _make_run(tmp_path_factory.mktemp("validate") / "runs" / "exp")
    manifest = export_run(run, quiet=True, log=_quiet)
    return run, manifest


@pytest.fixture
def run(exported: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported[0], tmp_path / "run"))


def test_export_and_validate_report_the_same_numbers(run: Path) -> None:
    """Same artifact, same images: the same top-1 and agreement with the student, to the last bit."""
    manifest = read_manifest(run)
    results = validate_run(run, quiet=True, log=_quiet)
    rows = {r["name"]: r for r in results["rows"]}
    checked = 0
    for entry in manifest["artifacts"]:
        if entry["accuracy"] is None:
            continue
        row = rows[entry["file"]]
        assert row["status"] == "ok"
        assert row["clean"]["top1"] == entry["accuracy"]["top1"], entry["file"]
        assert row["agreement"]["student"]["top1_agreement"] == entry["accuracy"]["agreement_with_student"]
        assert entry["accuracy"]["n"] == results["dataset"]["test_samples"]
        checked += 1
    assert checked >= 2  # model.onnx and model.int8.onnx at least


def _raising_graph(source: Path, target: Path) -> None:
    """`source` with a Reshape to [-1, 3] on its 10 logits: it loads, and every batch
    whose size is not a multiple of 3 makes onnxruntime raise while running it."""
    model = onnx.load(str(source))
    out = model.graph.output[0]
    raw = out.name + "_raw"
    for node in model.graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "bad_shape"))
    model.graph.node.append(helper.make_node("Reshape", [raw, "bad_shape"], [out.name]))
    out.type.tensor_type.ClearField("shape")
    onnx.save(model, str(target))


def test_an_artifact_that_raises_fails_its_gates(run: Path) -> None:
    """Before: an FP16 artifact that raised made its gates pending and validate exit 0."""
    fp16 = run / "export" / "model.fp16.onnx"
    _raising_graph(fp16, fp16)
    add_artifact(run, "model.fp16.onnx", "onnx", "fp16", source="model.onnx")  # a consistent manifest
    results = validate_run(run, quiet=True, log=_quiet)
    row = next(r for r in results["rows"] if r["name"] == "model.fp16.onnx")
    assert row["status"] == "error" and "onnxruntime" in row["reason"] and row["clean"] is None
    gates = [g for g in results["gates"] if g["artifact"] == "model.fp16.onnx"]
    assert gates and all(g["status"] == "fail" for g in gates)
    assert all("raised ArtifactError" in g["message"] for g in gates)
    assert results["exit_code"] == 1
    others = [r for r in results["rows"] if r["name"] in ("model.onnx", "model.int8.onnx")]
    assert [r["status"] for r in others] == ["ok", "ok"]  # one broken artifact does not stop the others


@pytest.mark.skipif(available("tensorrt"), reason="checks the pending verdict where TensorRT is absent")
def test_an_absent_runtime_is_pending_not_failed(run: Path) -> None:
    from richkd_deploy.runtime.engine_sidecar import RuntimeEnv, ShapeProfile, make_sidecar, write_sidecar

    engine = run / "export" / "model.fp16.engine"
    engine.write_bytes(b"plan")
    profile = ShapeProfile("input", (1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32))
    write_sidecar(engine, make_sidecar(engine, run / "export" / "model.fp16.onnx", "fp16", profile,
                                       RuntimeEnv("10.3.0", "GPU", "8.9")))
    add_artifact(run, "model.fp16.engine.json", "engine-sidecar", "fp16", source="model.fp16.engine")
    add_artifact(run, "model.fp16.engine", "engine", "fp16", source="model.fp16.onnx")
    results = validate_run(run, quiet=True, log=_quiet)
    row = next(r for r in results["rows"] if r["name"] == "model.fp16.engine")
    assert row["status"] == "pending" and "TensorRT is not installed" in row["reason"]
    gates = [g for g in results["gates"] if g["artifact"] == "model.fp16.engine"]
    assert gates and all(g["status"] == "pending" for g in gates)


def test_calibrated_model_is_an_export_step_and_bench_labels_it(run: Path) -> None:
    """validate --calibrate: T fitted on the held-out split, model.calibrated.onnx committed
    by the exporter; bench times it as fp32-calibrated next to the real FP32 model."""
    from exporters.calibrated import CALIBRATED, export_calibrated
    from exporters.formats import format_of_file
    from richkd_deploy.evaluate.latency import bench_run

    assert format_of_file(CALIBRATED).label == "fp32-calibrated"
    results = validate_run(run, calibrate=True, write_calibrated=export_calibrated, quiet=True, log=_quiet)
    manifest = read_manifest(run)
    entry = manifest.artifact(CALIBRATED)
    assert entry["temperature"] > 0 and entry["source"] == "model.onnx"
    assert not list((run / "export").glob(".staging-*"))
    assert CALIBRATED in {r["name"] for r in results["rows"]}
    report = bench_run(run, batch_sizes=(1,), iters=2, warmup=1, budget_s=0.0, log=_quiet)
    timed = report["results"]["1"]
    assert {"onnxruntime-fp32", "onnxruntime-int8", "onnxruntime-fp32-calibrated"} <= set(timed)
    with pytest.raises(TypeError, match="write_calibrated"):
        validate_run(run, calibrate=True, quiet=True, log=_quiet)


@pytest.mark.skipif(not available("openvino"), reason="openvino is not installed")
def test_validate_runs_the_artifacts_through_openvino(run: Path) -> None:
    ort = {r["name"]: r for r in validate_run(run, quiet=True, log=_quiet)["rows"]}
    results = validate_run(run, runtime="openvino", quiet=True, log=_quiet)
    rows = {r["name"]: r for r in results["rows"]}
    fp32 = rows["model.onnx"]
    assert fp32["status"] == "ok" and fp32["backend"] == "openvino-cpu-f32"
    assert fp32["runtime"]["inference_precision"] == "f32"
    assert abs(fp32["clean"]["top1"] - ort["model.onnx"]["clean"]["top1"]) <= 1 / results["dataset"]["test_samples"]
    assert rows["torch-fp32"]["backend"] == "torch"
