"""torch -> ONNX FP32: every architecture, dynamic batch, metadata, single file, parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporters.metadata import build_metadata, read_metadata
from exporters.onnx_fp32 import INPUT_NAME, OUTPUT_NAME, export_onnx
from exporters.parity import check_parity, measure
from richkd_deploy.errors import ArtifactError
from richkd_deploy.runtime import TorchRuntime
from richkd_deploy.runtime.onnxruntime import make_session, run_session

from .helpers import TinyNet, payload_for

# the slowest exports on two cores (seconds each); still run in CI under -m slow
SLOW_MODELS = {"ResNet50", "ResNet18", "resnet110", "resnet56", "resnet44", "resnet32x4", "ShuffleV1", "ShuffleV2",
               "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "wrn_40_1", "wrn_40_2"}


def _model_names() -> list[object]:
    from richkd_deploy.models import list_models

    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in list_models()]


def _bn_calibrated(model: torch.nn.Module) -> torch.nn.Module:
    """Random init with BatchNorm statistics from random data, so deep ResNets do not
    blow logits up to 1e8 (a parity test then only measures float32 rounding)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("name", _model_names())
def test_every_model_exports_and_matches_pytorch(name: str, tmp_path: Path) -> None:
    from richkd_deploy.models import create_model, export_view

    torch.manual_seed(0)
    model = export_view(_bn_calibrated(create_model(name, num_classes=10)))
    path = export_onnx(model, tmp_path / "model.onnx", (3, 32, 32), 17, {"arch": name})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no .onnx.data, no temp file left
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = run_session(make_session(path, "cpu", threads=1), x)
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * scale)
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_one_file_serves_batch_1_7_and_64(trained_tiny: torch.nn.Module, fmnist: dict, tmp_path: Path) -> None:
    path = export_onnx(trained_tiny, tmp_path / "model.onnx", (3, 32, 32), 17, {})
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    session = make_session(path, "cpu")
    xte, _ = fmnist["test"]
    ref = TorchRuntime(trained_tiny).predict
    for n in (1, 7, 64):
        x = xte[:n]
        out = run_session(session, x)
        assert out.shape == (n, 10)
        np.testing.assert_allclose(out, ref(x), atol=1e-4)


def test_metadata_round_trip(trained_tiny: torch.nn.Module, fmnist: dict, tmp_path: Path) -> None:
    import richkd_deploy

    payload = payload_for(fmnist)
    path = export_onnx(trained_tiny, tmp_path / "m.onnx", (3, 32, 32), 17,
                       build_metadata(payload, 17, INPUT_NAME, OUTPUT_NAME))
    meta = read_metadata(path)
    assert meta["classes"] == fmnist["classes"]
    assert meta["input_size"] == 32 and meta["channels"] == 3 and meta["input_shape"] == [3, 32, 32]
    assert meta["mean"] == pytest.approx(list(fmnist["mean"])) and meta["std"] == pytest.approx(list(fmnist["std"]))
    assert meta["temperature"] == 1.5
    assert meta["recipe_hash"] == "0" * 64
    assert meta["richkd_deploy_version"] == richkd_deploy.__version__
    assert meta["clip_random"] is True
    assert meta["exporter"] == "torchscript" and meta["opset"] == 17


def test_metadata_omits_unfitted_temperature(fmnist: dict) -> None:
    payload = {**payload_for(fmnist), "temperature": None}
    assert "temperature" not in build_metadata(payload, 17, INPUT_NAME, OUTPUT_NAME)


@pytest.mark.parametrize("opset", [13, 17])
def test_recipe_opset_is_honoured(opset: int, tmp_path: Path) -> None:
    path = export_onnx(TinyNet().eval(), tmp_path / "m.onnx", (3, 32, 32), opset, {})
    versions = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert versions.get("", versions.get("ai.onnx")) == opset


def test_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporters.onnx_fp32 as onnx_fp32

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("unsupported op")

    def dynamo_fails_too(*_a: object) -> bytes:  # the real fallback takes seconds to import and fail
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(onnx_fp32, "_export_dynamo", dynamo_fails_too)
    with pytest.raises(ArtifactError, match=r"could not export Broken .*torchscript: .*unsupported op"):
        export_onnx(Broken(), tmp_path / "m.onnx", (3, 32, 32), 17, {})
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_names_both_numbers(trained_tiny: torch.nn.Module, fmnist: dict) -> None:
    xte, _ = fmnist["test"]
    ref = TorchRuntime(trained_tiny).predict
    batches = [xte[:64], xte[64:128]]
    ok = measure(ref, ref, batches)
    assert ok.max_abs_diff == 0 and ok.top1_agreement == 1.0 and ok.n == 128

    def shuffled(b: np.ndarray) -> np.ndarray:
        return ref(b)[:, ::-1].copy()  # wrong class order

    with pytest.raises(ArtifactError, match=r"max \|logit diff\| .* top-1 agreement 0\.\d+"):
        check_parity(ref, shuffled, batches, atol=1e-4, min_agreement=1.0)
