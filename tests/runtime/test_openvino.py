"""OpenVINO runs the ONNX artifacts like onnxruntime does, in the precision it says it used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exporters.onnx_fp32 import export_onnx
from richkd_deploy import models
from richkd_deploy.deps import available
from richkd_deploy.errors import ArtifactError, MissingDependencyError
from richkd_deploy.runtime import OpenVINORuntime, create_runtime

needs_openvino = pytest.mark.skipif(not available("openvino"), reason="openvino is not installed")


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    view = models.export_view(models.create_model("resnet8", num_classes=10)).eval()
    return export_onnx(view, tmp_path_factory.mktemp("ov") / "model.onnx", (3, 32, 32), 17, {})


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)


@needs_openvino
def test_openvino_matches_onnxruntime_on_an_fp32_export(fp32_onnx: Path) -> None:
    ort = create_runtime(fp32_onnx, "cpu", manifest=False)
    with create_runtime(fp32_onnx, "cpu", manifest=False, runtime="openvino") as ov:
        assert isinstance(ov, OpenVINORuntime) and ov.input_shape == (3, 32, 32) and ov.num_classes == 10
        assert ov.details()["inference_precision"] == "f32" and ov.name == "openvino-cpu-f32"
        for n in (1, 7, 64):
            np.testing.assert_allclose(ov.predict(_x(n)), ort.predict(_x(n)), atol=1e-4, rtol=0)


@needs_openvino
def test_the_precision_reported_is_the_one_that_ran(fp32_onnx: Path) -> None:
    """Where the CPU has bf16, OpenVINO's default would run this FP32 model in bf16;
    asked for bf16 it says so, and its logits are visibly not the FP32 ones."""
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16")
    ref = create_runtime(fp32_onnx, "cpu", manifest=False).predict(_x(32))
    with create_runtime(fp32_onnx, "cpu", manifest=False, runtime="openvino", precision_hint="bf16") as low:
        assert low.details()["inference_precision"] == "bf16"
        assert np.abs(low.predict(_x(32)) - ref).max() > 1e-4


@needs_openvino
def test_openvino_refuses_what_it_cannot_do(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not 'cuda'"):
        create_runtime(fp32_onnx, "cuda", manifest=False, runtime="openvino")
    with pytest.raises(ArtifactError, match="runs .onnx files only"):
        create_runtime(tmp_path / "model.engine", runtime="openvino")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ArtifactError, match="OpenVINO cannot load"):
        create_runtime(bad, "cpu", manifest=False, runtime="openvino")


@pytest.mark.skipif(available("openvino"), reason="checks the error when openvino is absent")
def test_openvino_missing_names_the_extra(fp32_onnx: Path) -> None:
    with pytest.raises(MissingDependencyError, match=r"richkd-deploy\[openvino\]"):
        create_runtime(fp32_onnx, "cpu", manifest=False, runtime="openvino")
