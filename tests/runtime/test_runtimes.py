"""Runtimes: one predict() for torch, onnxruntime and TensorRT; artifact checks first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from exporters.onnx_fp32 import export_onnx
from richkd_deploy.deps import available
from richkd_deploy.errors import ArtifactError, MissingDependencyError
from richkd_deploy.manifest import artifact_entry, build_manifest, read_manifest, write_manifest
from richkd_deploy.runtime import OnnxRuntime, Runtime, TensorRTRuntime, TorchRuntime, create_runtime


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(feats), feats  # (logits, features), like the model zoo


class Logits(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def export_dir(net: nn.Module, tmp_path: Path) -> Path:
    d = tmp_path / "export"
    export_onnx(Logits(net), d / "model.onnx", (3, 8, 8), 17, {})
    write_manifest(build_manifest(d, [artifact_entry(d, "model.onnx", "onnx", "fp32")], opset=17, recipe_hash=None,
                                  device="cpu"))
    return d


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32)


def test_torch_and_onnxruntime_agree(net: nn.Module, export_dir: Path) -> None:
    with TorchRuntime(net) as tb, OnnxRuntime(export_dir / "model.onnx") as ob:
        assert tb.name == "torch" and ob.name == "onnxruntime-cpu"
        assert ob.input_shape == (3, 8, 8) and ob.num_classes == 5
        for n in (1, 7, 64):
            np.testing.assert_allclose(ob.predict(_x(n)), tb.predict(_x(n)), atol=1e-5)
    with pytest.raises(ArtifactError, match="closed"):
        ob.predict(_x(1))


def test_torch_backend_from_student_checkpoint(tmp_path: Path) -> None:
    from richkd_deploy import models

    torch.manual_seed(0)
    model = models.create_model("resnet8", num_classes=10)
    path = tmp_path / "student.pt"
    torch.save({"format": "richkd-deploy/student/1", "model": model.state_dict(), "arch": "resnet8", "num_classes": 10,
                "input_size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}, path)
    backend = create_runtime(path)
    assert isinstance(backend, TorchRuntime) and backend.input_shape == (3, 32, 32)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = models.export_view(model.eval())(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.predict(x), ref, atol=1e-5)
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pt")  # mdistiller style: needs arch
    with pytest.raises(Exception, match="architecture"):
        create_runtime(tmp_path / "bare.pt")
    assert create_runtime(tmp_path / "bare.pt", arch="resnet8").num_classes == 10


def test_input_checks(net: nn.Module, export_dir: Path) -> None:
    b = OnnxRuntime(export_dir / "model.onnx")
    with pytest.raises(ArtifactError, match=r"images are \[3, 16, 16\] but the model takes \[3, 8, 8\]"):
        b.predict(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ArtifactError, match="float32 batch"):
        b.predict(np.zeros((1, 3, 8, 8), np.uint8))
    assert b.predict(np.zeros((0, 3, 8, 8), np.float32)).shape == (0, 5)
    assert b.predict(_x(2).astype(np.float64)).dtype == np.float32


def test_large_batches_are_split_and_small_ones_padded(net: nn.Module) -> None:
    seen: list[int] = []

    class Limited(Runtime):
        name = "limited"
        max_batch = 4
        min_batch = 2

        def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
            seen.append(len(batch))
            return TorchRuntime(net).predict(batch)

    out = Limited().predict(_x(11))
    assert seen == [4, 4, 3] and out.shape == (11, 5)
    np.testing.assert_allclose(out, TorchRuntime(net).predict(_x(11)), atol=1e-6)
    seen.clear()
    assert Limited().predict(_x(1)).shape == (1, 5) and seen == [2]


def test_create_runtime_picks_by_suffix(export_dir: Path, tmp_path: Path) -> None:
    assert isinstance(create_runtime(export_dir / "model.onnx"), OnnxRuntime)
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="cannot tell how to run"):
        create_runtime(tmp_path / "model.tflite")
    with pytest.raises(ArtifactError, match="does not exist"):
        create_runtime(tmp_path / "missing.onnx")


def test_tampered_artifact_is_refused(export_dir: Path) -> None:
    path = export_dir / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    for manifest in (None, export_dir.parent / "export", read_manifest(export_dir)):  # auto, path, object
        with pytest.raises(ArtifactError, match="changed since export"):
            create_runtime(path, manifest=manifest)
    create_runtime(path, manifest=False)  # explicit opt-out still loads (the file is still valid ONNX)


def test_asking_for_cuda_on_a_cpu_onnxruntime_is_a_clear_error(export_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(MissingDependencyError, match=r"has no CUDAExecutionProvider: .*richkd-deploy\[gpu\]"):
        create_runtime(export_dir / "model.onnx", provider="cuda")
    with pytest.raises(ArtifactError, match="unknown onnxruntime provider"):
        OnnxRuntime(export_dir / "model.onnx", provider="rocm")


def test_silent_provider_fallback_is_detected(export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu lists CUDA even where it cannot load, then quietly runs on the CPU."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession

    def fallback(path: str, opts: object, providers: list, **kw: object) -> object:
        return real(path, opts, providers=["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(ort, "InferenceSession", fallback)
    with pytest.raises(MissingDependencyError, match="could not start CUDAExecutionProvider .*fell back to CPUExecutionProvider"):
        OnnxRuntime(export_dir / "model.onnx", provider="cuda")


@pytest.mark.skipif(available("tensorrt"), reason="checks the error when tensorrt is absent")
def test_tensorrt_backend_without_tensorrt(tmp_path: Path) -> None:
    from richkd_deploy.runtime.engine_sidecar import RuntimeEnv, ShapeProfile, make_sidecar, write_sidecar

    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    profile = ShapeProfile("input", (1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32))
    # an intact engine + sidecar: only then is the missing TensorRT the problem (a missing
    # sidecar or a changed engine is refused first, without TensorRT)
    write_sidecar(engine, make_sidecar(engine, tmp_path / "model.onnx", "fp16", profile, RuntimeEnv("10.3.0", "GPU", "8.9")))
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        create_runtime(engine)
    with pytest.raises(ArtifactError, match="provider 'tensorrt'"):
        create_runtime(engine, provider="cpu")
    assert TensorRTRuntime  # imported without tensorrt
