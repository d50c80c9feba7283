"""Every registered architecture against the reference JSON, plus the forward contract."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from richkd_deploy.models import ModelOutput, create_model, export_view, list_models

ALL = list_models()


def _ref(reference_models: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in reference_models:
        pytest.skip(f"{name} has no entry in the reference JSON")
    return reference_models[name]


def test_zoo_covers_every_reference_model(reference_models: dict[str, Any]) -> None:
    assert sorted(reference_models) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_matches_reference(name: str, reference_models: dict[str, Any]) -> None:
    ref = _ref(reference_models, name)
    model = create_model(name)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == ref["state_dict"]  # names, order and shapes
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ref["params"]
    assert model.num_features == ref["pooled_feature_dim"]
    assert model.num_classes == 100


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_contract(name: str, optional_reference: dict[str, Any] | None) -> None:
    torch.manual_seed(0)
    model = create_model(name).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, ModelOutput) and isinstance(out, tuple) and len(out) == 2
    logits, feats = out
    assert logits.shape == (2, 100)
    assert feats.shape == (2, model.num_features)
    if optional_reference is not None and name in optional_reference["models"]:
        ref = optional_reference["models"][name]
        assert list(logits.shape) == ref["logits_shape_for_2x3x32x32"]
        assert model.num_features == ref["pooled_feature_dim"]
    (logits.square().mean() + feats.mean()).backward()
    # Every parameter must take part, or DDP without find_unused_parameters breaks.
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused


@pytest.mark.parametrize("name", ALL)
def test_other_input_size_and_class_count(name: str) -> None:
    """28x28 is Fashion-MNIST's native size; the global pool makes any size work."""
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(1, 3, 28, 28))
    assert logits.shape == (1, 10)
    assert feats.shape == (1, model.num_features)


@pytest.mark.parametrize("name", ["vgg8", "MobileNetV2", "ShuffleV1", "resnet8"])
def test_64x64_input(name: str) -> None:
    """64x64 takes VGG's extra pool3 and would break MobileNetV2's fixed AvgPool2d(2)."""
    model = create_model(name).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 100)
    assert feats.shape == (1, model.num_features)


def test_export_view_returns_logits_only() -> None:
    model = create_model("resnet8").eval()
    view = export_view(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = view(x)
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, model(x).logits, rtol=0, atol=0)
    assert export_view(view) is view
    assert view.state_dict().keys() == {f"model.{k}" for k in model.state_dict()}
    assert next(view.parameters()) is next(model.parameters())  # shares weights, no copy


@pytest.mark.parametrize("name", ["resnet8", "vgg8"])
def test_export_view_exports_with_a_dynamic_batch(name: str) -> None:
    """torch.export (what the ONNX exporter builds on) with a symbolic batch: an
    exported program taken at batch 2 must run at batch 5 and agree with eager."""
    from torch.export import Dim, export

    view = export_view(create_model(name).eval())
    program = export(view, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: Dim("batch", min=1, max=4096)},))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), view(x))
