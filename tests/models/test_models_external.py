"""torchvision/<name> and timm/<name>: the (logits, features) contract through each
library's own API, the logits-only export view in onnxruntime, names, and the list.

Tiny random-init models only (no downloads): torchvision resnet18 / mobilenet_v3_small
at 64 px, timm resnet10t / mobilenetv3_small_050.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from richkd_deploy.errors import RecipeError
from richkd_deploy.models import ModelOutput, create_model, export_view
from richkd_deploy.models.registry import list_all_models, resolve_name

TINY = ["torchvision/resnet18", "torchvision/mobilenet_v3_small", "timm/resnet10t", "timm/mobilenetv3_small_050"]
# pooled penultimate width = the classifier's input, per library
FEATURES = {"torchvision/resnet18": 512, "torchvision/mobilenet_v3_small": 1024, "timm/resnet10t": 512,
            "timm/mobilenetv3_small_050": 1024}


@pytest.fixture(scope="module")
def built() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=5) for name in TINY}


@pytest.mark.parametrize("name", TINY)
def test_contract_logits_features_and_export_view(built: dict, name: str) -> None:
    model = built[name].eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        ref = export_view(model)(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 5)
    assert out.features.shape == (2, FEATURES[name]) == (2, model.num_features)
    assert model.num_classes == 5 and model.arch == name
    # the export view is the library module itself: the same logits, nothing else
    assert isinstance(ref, torch.Tensor)
    torch.testing.assert_close(ref, out.logits, rtol=0, atol=0)
    if hasattr(model, "_captured"):  # the export view, called alone, leaves nothing behind (validate calls it often)
        assert model._captured == []
    # the features are what the classifier sees: applying it gives the logits
    torch.testing.assert_close(model.get_classifier()(out.features), out.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_trains_backward_through_logits_and_features(built: dict, name: str) -> None:
    model = built[name].train()
    logits, feats = model(torch.randn(2, 3, 64, 64))
    (logits.sum() + feats.pow(2).mean()).backward()
    assert model.get_classifier().weight.grad is not None
    first = next(p for p in model.parameters() if p.ndim == 4)
    assert first.grad is not None and torch.isfinite(first.grad).all()
    model.zero_grad(set_to_none=True)


def test_default_input_sizes_come_from_the_libraries(built: dict) -> None:
    assert built["torchvision/resnet18"].default_input_size == 224
    assert built["timm/mobilenetv3_small_050"].default_input_size == 224
    assert built["timm/resnet10t"].default_input_size == 176  # its pretrained_cfg trains at 176
    assert create_model("torchvision/efficientnet_b4", num_classes=3).default_input_size == 380


def test_no_library_code_is_edited(built: dict) -> None:
    """The library module keeps its own class and key names, so its weight files load into it."""
    import timm
    import torchvision

    tv = built["torchvision/resnet18"].model
    assert type(tv) is torchvision.models.ResNet and "fc.weight" in tv.state_dict()
    tm = built["timm/resnet10t"].model
    assert type(tm) is timm.models.ResNet and tm.get_classifier().out_features == 5


@pytest.mark.parametrize("name", ["torchvision/mobilenet_v3_small", "timm/mobilenetv3_small_050"])
def test_export_view_runs_in_onnxruntime(built: dict, name: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from exporters.onnx_fp32 import export_onnx

    model = built[name].eval()
    path = export_onnx(export_view(model), tmp_path / "m.onnx", (3, 64, 64), 17, {"arch": name})
    x = torch.randn(3, 3, 64, 64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).logits.numpy()
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_names_resolve_with_the_libraries_spelling() -> None:
    assert resolve_name("torchvision/ResNet18") == "torchvision/resnet18"
    assert resolve_name("TIMM/mobilenetv3_small_100") == "timm/mobilenetv3_small_100"
    with pytest.raises(RecipeError, match="did you mean timm/mobilenetv3_small_100"):
        resolve_name("timm/mobilenetv3_smal_100")
    with pytest.raises(RecipeError, match="unknown model family 'tv'"):
        resolve_name("tv/resnet18")
    with pytest.raises(RecipeError, match="not supported: its classifier is a convolution"):
        resolve_name("torchvision/squeezenet1_0")
    with pytest.raises(RecipeError, match="no options besides num_classes"):
        create_model("timm/resnet10t", num_classes=3, drop_rate=0.1)


def test_list_all_models_spans_three_families() -> None:
    names = list_all_models("*resnet18")
    assert "ResNet18" in names and "torchvision/resnet18" in names and "timm/resnet18" in names
    assert list_all_models("timm/mobilenetv3_small_*") == [
        "timm/mobilenetv3_small_050", "timm/mobilenetv3_small_075", "timm/mobilenetv3_small_100"]
    assert all(n.startswith("torchvision/") for n in list_all_models("torchvision/*"))
    assert "torchvision/squeezenet1_0" not in list_all_models("torchvision/*")


def test_cli_models_lists_params_and_input_size(tmp_path, monkeypatch) -> None:
    from richkd_deploy.cli import cli

    monkeypatch.setenv("RICHKD_CACHE", str(tmp_path))
    runner = CliRunner()
    out = runner.invoke(cli, ["models", "*resnet18"])
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line.split()[1:] for line in out.output.splitlines()[1:]}
    assert rows["torchvision/resnet18"] == ["11.69M", "224"]
    assert rows["timm/resnet18"] == ["11.69M", "224"]  # built on the meta device, then cached
    assert rows["ResNet18"][1] == "32"
    assert list(tmp_path.glob("timm-params-*.json"))
    out = runner.invoke(cli, ["models", "nothing-like-this*"])
    assert out.exit_code != 0 and "no model matches" in str(out.exception)
