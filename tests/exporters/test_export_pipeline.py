"""The export command end to end: artifacts, manifest, --force, crashes, --trt."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

import exporters.commit as commit_mod
import exporters.int8_tune as int8_tune
import exporters.pipeline as pipeline
import exporters.stage_onnx as stage_onnx
from exporters.metadata import read_metadata
from exporters.pipeline import export_run, export_student
from richkd_deploy.deps import available
from richkd_deploy.errors import ArtifactError, MissingDependencyError
from richkd_deploy.manifest import read_manifest, verify_artifact
from richkd_deploy.runs import sha256_file

from .helpers import listed_files_ok, make_run, quiet_log

FILES = ["model.onnx", "model.int8.onnx", "model.fp16.onnx"]


def _export(inputs: dict[str, Any], export_dir: Path, **kw: Any) -> Any:
    return export_student(inputs["student"], inputs["data"], export_dir, inputs["settings"], quiet=True,
                          log=quiet_log, **kw)


def test_export_writes_every_artifact_then_the_manifest(export_inputs: dict, tmp_path: Path) -> None:
    d = tmp_path / "export"
    manifest = _export(export_inputs, d)
    assert sorted(p.name for p in d.iterdir()) == sorted([*FILES, "manifest.json"])  # no staging or temp left
    assert [a["file"] for a in manifest["artifacts"]] == FILES
    for entry in manifest["artifacts"]:
        verify_artifact(manifest, entry["file"])
        assert entry["accuracy"]["n"] == 256 and 0 <= entry["accuracy"]["top1"] <= 1
    fp32, int8, fp16 = manifest["artifacts"]
    assert fp32["parity"]["max_abs_diff"] <= 1e-4 and fp32["parity"]["top1_agreement"] == 1.0
    assert int8["parity"]["top1_agreement"] >= 0.9 and int8["quantization"]["calibration_images"] == 128
    assert fp16["parity"]["reference"] == "model.onnx"
    assert manifest["opset"] == 17 and manifest["recipe_hash"] == "0" * 64
    assert manifest["input"] == {"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"}
    assert read_manifest(d) == manifest
    assert read_metadata(d / "model.int8.onnx")["classes"] == manifest["classes"]


def test_existing_export_is_kept_without_force_and_replaced_with_it(export_inputs: dict, tmp_path: Path) -> None:
    d = tmp_path / "export"
    first = _export(export_inputs, d)
    with pytest.raises(ArtifactError, match="pass --force"):
        _export(export_inputs, d)
    assert read_manifest(d) == first
    (d / "stale.engine").write_bytes(b"old")  # a file only the old export had
    first["artifacts"].append({"file": "stale.engine", "kind": "engine", "precision": "fp16",
                               "sha256": sha256_file(d / "stale.engine"), "size": 3})
    commit_mod.write_manifest(first)
    second = _export(export_inputs, d, force=True)
    assert second["created_at"] >= first["created_at"]
    assert not (d / "stale.engine").exists()
    assert listed_files_ok(d)


class Boom(RuntimeError):
    pass


def _fail_quantize(*_a: Any, **_k: Any) -> None:
    raise Boom("killed during quantization")


def _fail_after_first_move(staging: Path, export_dir: Path, names: Any) -> None:
    names = list(names)
    os.replace(staging / names[0], export_dir / names[0])
    raise Boom("killed while moving files in")


def _fail_manifest(*_a: Any, **_k: Any) -> None:
    raise Boom("killed before the manifest was written")


@pytest.mark.parametrize("where, patch", [("quantize_int8", _fail_quantize), ("move_in", _fail_after_first_move),
                                          ("write_manifest", _fail_manifest)])
@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "over-old-export"])
def test_interrupted_export_never_leaves_a_manifest_over_partial_files(
        export_inputs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, patch: Any,
        previous: bool) -> None:
    d = tmp_path / "export"
    if previous:
        _export(export_inputs, d)
    with monkeypatch.context() as m:
        m.setattr(int8_tune if where == "quantize_int8" else commit_mod, where, patch)  # the INT8 tuner quantizes
        with pytest.raises(Boom):
            _export(export_inputs, d, force=True)
    assert listed_files_ok(d)
    if where == "quantize_int8" and previous:
        assert (d / "manifest.json").exists()  # nothing committed yet: the old export is still whole
    if where != "quantize_int8":
        assert not (d / "manifest.json").exists()  # the old manifest was withdrawn before files moved
    assert not list(d.glob(".staging-*"))
    # a rerun completes: plain when the manifest was withdrawn, with --force over an intact old export
    manifest = _export(export_inputs, d, force=(d / "manifest.json").exists())
    for entry in manifest["artifacts"]:
        verify_artifact(manifest, entry["file"])


@pytest.mark.skipif(available("tensorrt"), reason="checks the behaviour without TensorRT")
def test_trt_without_tensorrt_keeps_the_onnx_export(export_inputs: dict, tmp_path: Path) -> None:
    d = tmp_path / "export"
    with pytest.raises(MissingDependencyError) as err:
        _export(export_inputs, d, trt=True)
    assert str(err.value) == ('TensorRT is not installed: pip install "richkd-deploy[trt]" on a machine with an '
                              "NVIDIA GPU, then rerun with --trt --force")
    manifest = read_manifest(d)
    assert [a["file"] for a in manifest["artifacts"]] == FILES
    assert listed_files_ok(d)
    # engines are built from model.int8.onnx: `layout: auto` wrote the tensorrt layout
    assert read_metadata(onnx.load(str(d / "model.int8.onnx")))["quantization"]["layout"] == "tensorrt"


def test_int8_layout_auto_is_the_cpu_layout_without_trt(export_inputs: dict, tmp_path: Path) -> None:
    """Without --trt nothing builds an engine from model.int8.onnx, so `layout: auto` writes
    the layout onnxruntime's CPU provider runs fastest (Relus folded into uint8 Q)."""
    _export(export_inputs, tmp_path / "export")
    quant = read_metadata(onnx.load(str(tmp_path / "export" / "model.int8.onnx")))["quantization"]
    assert quant["layout"] == "cpu" and quant["relus_folded"] > 0 and quant["tensorrt_compatible"] is False


def test_cpu_int8_layout_with_tensorrt_is_refused_before_anything_is_written(export_inputs: dict,
                                                                            tmp_path: Path) -> None:
    import dataclasses

    from richkd_deploy.errors import RecipeError
    from richkd_deploy.recipe import Int8Config

    cfg = dataclasses.replace(export_inputs["settings"], int8=Int8Config(layout="cpu"))
    with pytest.raises(RecipeError, match="layout: cpu"):
        export_student(export_inputs["student"], export_inputs["data"], tmp_path / "export", cfg, trt=True,
                       quiet=True, log=lambda _m: None)
    assert not (tmp_path / "export").exists() or not (tmp_path / "export" / "manifest.json").exists()


# ----------------------------------------------------------------------------- run folder level



def test_export_run_from_a_run_folder(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "exp")
    logs: list[str] = []
    manifest = export_run(run, quiet=True, log=logs.append)
    # a run folder's test set holds raw images, so export also writes the golden vectors
    assert [a["file"] for a in manifest["artifacts"]] == [*FILES, "golden.npz"]
    assert manifest["student_sha256"] == sha256_file(run / "student.pt")
    assert manifest["arch"] == "resnet8" and manifest["dataset"] == "synthetic"
    assert manifest["artifacts"][0]["accuracy"]["n"] == 200
    assert any("model.int8.onnx: top-1" in line for line in logs)
    assert not (run / ".lock").exists()
    with pytest.raises(ArtifactError, match="--force"):
        export_run(run, quiet=True, log=quiet_log)


class FakeEngine:
    """Stands in for a deserialized engine: runs the PyTorch model on the CPU."""

    def __init__(self, model: torch.nn.Module, sidecar: dict) -> None:
        from richkd_deploy.runtime.engine_sidecar import profile_of

        self.model, self.sidecar, self.profile = model, sidecar, profile_of(sidecar)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        assert len(x) <= self.profile.max_batch
        with torch.no_grad():
            return self.model(x)


def test_engine_stage_commits_engines_and_sidecars(export_inputs: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--trt's bookkeeping (profile, timing cache, sidecars, second commit) with the
    TensorRT calls replaced; the real build is tested under the `trt` marker."""
    import exporters.tensorrt_build as tb
    import richkd_deploy.runtime.tensorrt as tr
    from richkd_deploy.runtime.engine_sidecar import RuntimeEnv, check_sidecar, make_sidecar, write_sidecar

    env = RuntimeEnv("11.1.0", "Fake GPU", "9.0")
    built: list[tuple[str, tuple, Path]] = []

    def fake_build(onnx_path: Path, precision: str, profile: Any, out_path: Path, **kw: Any) -> tuple[Path, dict]:
        built.append((precision, profile.max, kw["timing_cache"]))
        out_path.write_bytes(b"plan-" + precision.encode())
        side = make_sidecar(out_path, onnx_path, precision, profile, env)
        write_sidecar(out_path, side)
        return out_path, side

    def fake_load(path: Path, env_: Any = None) -> FakeEngine:
        return FakeEngine(export_inputs["student"].view, check_sidecar(path, env_ or env))

    monkeypatch.setattr(pipeline, "available", lambda name: True)
    monkeypatch.setattr(tr, "running_env", lambda: env)
    monkeypatch.setattr(tb, "build_engine", fake_build)
    monkeypatch.setattr(tr, "load_engine", fake_load)
    cfg = export_inputs["settings"]  # the test pass uses batches of 256: split by the profile
    export_inputs["settings"] = dataclasses.replace(cfg, trt=dataclasses.replace(cfg.trt, max_batch=48))
    d = tmp_path / "export"
    manifest = _export(export_inputs, d, trt=True)
    assert [(p, m[0]) for p, m, _ in built] == [("fp16", 48), ("int8", 48)]
    assert all(c == d / "timing.cache" for *_, c in built)
    files = [a["file"] for a in manifest["artifacts"]]
    assert files == [*FILES, "model.fp16.engine", "model.fp16.engine.json", "model.int8.engine",
                     "model.int8.engine.json"]
    assert listed_files_ok(d) and read_manifest(d) == manifest
    engine = manifest.artifact("model.int8.engine")
    assert engine["source"] == "model.int8.onnx" and engine["sidecar"] == "model.int8.engine.json"
    assert engine["parity"]["top1_agreement"] == 1.0 and engine["accuracy"]["n"] == 256
    assert manifest["tools"]["tensorrt"] == "11.1.0" and manifest["device"]["compute_capability"] == "9.0"
    assert manifest["trt"]["profile"]["max"] == [48, 3, 32, 32]


def test_fp16_without_a_cpu_runtime_is_recorded_not_fatal(export_inputs: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = stage_onnx.create_runtime

    def no_fp16(path: Path, provider: str | None = None, **kw: Any) -> Any:
        if "fp16" in Path(path).name:
            raise ArtifactError("onnxruntime cannot load model.fp16.onnx on CPUExecutionProvider: no kernel")
        return real(path, provider, **kw)

    monkeypatch.setattr(stage_onnx, "create_runtime", no_fp16)
    manifest = _export(export_inputs, tmp_path / "export")
    fp16 = manifest.artifact("model.fp16.onnx")
    assert fp16["parity"]["status"].startswith("not run: onnxruntime cannot load") and fp16["accuracy"] is None
    assert listed_files_ok(tmp_path / "export")


def test_asymmetric_int8_with_tensorrt_is_refused_before_anything_is_written(export_inputs: dict,
                                                                            tmp_path: Path) -> None:
    import dataclasses

    from richkd_deploy.errors import RecipeError
    from richkd_deploy.recipe import Int8Config

    cfg = dataclasses.replace(export_inputs["settings"], int8=Int8Config(symmetric_activations=False))
    with pytest.raises(RecipeError, match="TensorRT"):
        export_student(export_inputs["student"], export_inputs["data"], tmp_path / "export", cfg, trt=True,
                       quiet=True, log=lambda _m: None)
    assert not (tmp_path / "export" / "manifest.json").exists()
