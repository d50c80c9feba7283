"""Engine sidecars: written with the engine, checked before any deserialisation.

The "running environment" is passed in, so the refusals are tested with no GPU and
no TensorRT; the real build/run is in the `trt` tests at the end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from richkd_deploy.deps import available
from richkd_deploy.errors import ArtifactError, MissingDependencyError
from richkd_deploy.runtime.engine_sidecar import (
    RuntimeEnv,
    ShapeProfile,
    check_sidecar,
    make_sidecar,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

BUILT = RuntimeEnv("10.3.0.26", "NVIDIA Jetson Orin", "8.7")
PROFILE = ShapeProfile("input", (1, 3, 32, 32), (32, 3, 32, 32), (64, 3, 32, 32))


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    onnx = tmp_path / "model.fp16.onnx"
    onnx.write_bytes(b"onnx bytes")
    eng = tmp_path / "model.fp16.engine"
    eng.write_bytes(b"plan bytes")
    write_sidecar(eng, make_sidecar(eng, onnx, "fp16", PROFILE, BUILT, {"network_flags": []}))
    return eng


def test_sidecar_round_trip(engine: Path) -> None:
    side = read_sidecar(engine)
    assert sidecar_path(engine).name == "model.fp16.engine.json"
    assert side["tensorrt_version"] == "10.3.0.26" and side["compute_capability"] == "8.7"
    assert side["gpu_name"] == "NVIDIA Jetson Orin" and side["precision"] == "fp16"
    assert side["input_name"] == "input"
    assert side["shape_range"] == {"min": [1, 3, 32, 32], "opt": [32, 3, 32, 32], "max": [64, 3, 32, 32]}
    assert len(side["sha256"]) == 64 and len(side["source_onnx_sha256"]) == 64 and side["created_at"]
    assert engine.read_bytes() == b"plan bytes"  # the engine stays a plain plan


def test_matching_environment_passes_and_patch_release_is_tolerated(engine: Path) -> None:
    assert check_sidecar(engine, BUILT)["precision"] == "fp16"
    assert check_sidecar(engine, RuntimeEnv("10.3.1", "Another Orin", "8.7"))


def test_missing_sidecar_is_refused(engine: Path) -> None:
    sidecar_path(engine).unlink()
    with pytest.raises(ArtifactError, match="no sidecar .*--trt --force"):
        check_sidecar(engine, BUILT)


def test_corrupt_sidecar_is_refused(engine: Path) -> None:
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        check_sidecar(engine, BUILT)
    sidecar_path(engine).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ArtifactError, match="not a richkd-deploy/engine-sidecar/1"):
        check_sidecar(engine, BUILT)


def test_changed_engine_is_refused(engine: Path) -> None:
    engine.write_bytes(b"plan bytes, patched")
    with pytest.raises(ArtifactError, match="changed since it was built"):
        check_sidecar(engine, BUILT)


@pytest.mark.parametrize("version", ["10.4.0", "11.0.0"])
def test_other_tensorrt_version_is_refused(engine: Path, version: str) -> None:
    with pytest.raises(ArtifactError, match=f"built with TensorRT 10.3.0.26 but this machine has {version}"):
        check_sidecar(engine, RuntimeEnv(version, "NVIDIA Jetson Orin", "8.7"))


def test_other_gpu_architecture_is_refused(engine: Path) -> None:
    with pytest.raises(ArtifactError, match="compute capability 8.7 .* is 9.0"):
        check_sidecar(engine, RuntimeEnv("10.3.0", "NVIDIA H100", "9.0"))


@pytest.mark.skipif(available("tensorrt"), reason="checks the error when tensorrt is absent")
def test_load_engine_without_tensorrt_names_the_extra(engine: Path) -> None:
    from richkd_deploy.runtime.tensorrt import load_engine

    with pytest.raises(MissingDependencyError, match=r'pip install "richkd-deploy\[trt\]"'):
        load_engine(engine)


# ----------------------------------------------------------------------------- real TensorRT


def _needs_trt() -> None:
    if not available("tensorrt"):
        pytest.skip("tensorrt is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


@pytest.mark.trt
def test_build_and_run_fp16_and_int8_engines(trained_tiny, fmnist, tmp_path: Path) -> None:  # noqa: ANN001
    _needs_trt()
    from exporters.fp16 import convert_fp16
    from exporters.int8 import quantize_int8
    from exporters.onnx_fp32 import export_onnx
    from exporters.tensorrt_build import build_engine
    from richkd_deploy.runtime import TensorRTRuntime, TorchRuntime, agreement

    fp32 = export_onnx(trained_tiny, tmp_path / "model.onnx", (3, 32, 32), 17, {})
    xtr, _ = fmnist["train"]
    xte, _ = fmnist["test"]
    sources = {"fp16": convert_fp16(fp32, tmp_path / "model.fp16.onnx"),
               "int8": quantize_int8(fp32, [xtr[:128]], tmp_path / "model.int8.onnx")}
    profile = ShapeProfile("input", (1, 3, 32, 32), (16, 3, 32, 32), (32, 3, 32, 32))
    ref = TorchRuntime(trained_tiny).predict(xte[:100])
    cache = tmp_path / "timing.cache"
    for precision, src in sources.items():
        eng, side = build_engine(src, precision, profile, tmp_path / f"model.{precision}.engine", timing_cache=cache,
                                 log=lambda _m: None)
        assert side["sha256"] and cache.is_file()
        with TensorRTRuntime(eng) as backend:
            out = backend.predict(xte[:100])  # 100 > max batch 32: split by the backend
        assert out.shape == (100, 10)
        assert agreement(ref, out) >= (0.99 if precision == "fp16" else 0.95)
    assert np.isfinite(out).all()
