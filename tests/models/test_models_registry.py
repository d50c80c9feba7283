"""Name lookup: aliases, case, patterns, and the error a recipe typo produces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from richkd_deploy.errors import RecipeError, RichKDError
from richkd_deploy.models import create_model, list_models, register_model
from richkd_deploy.models.resnet_cifar import CifarResNet
from richkd_deploy.models.shufflenet import ShuffleNetV1


def test_list_models_natural_order_and_patterns() -> None:
    names = list_models()
    assert len(names) == len(set(names)) == 23
    assert names.index("resnet8") < names.index("resnet14") < names.index("resnet110")
    assert list_models("wrn_*") == ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]
    assert list_models("*x4") == ["resnet8x4", "resnet32x4"]
    assert list_models("SHUFFLE*") == ["ShuffleV1", "ShuffleV2"]  # case-insensitive
    assert list_models("vgg*_bn") == ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]  # via aliases
    assert list_models("nothing*") == []


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("mobilenetv2", "MobileNetV2"),
        ("mobile_half", "MobileNetV2"),
        ("shufflev1", "ShuffleV1"),
        ("ShuffleNetV2", "ShuffleV2"),
        ("resnet50", "ResNet50"),
        ("RESNET18", "ResNet18"),
        ("vgg8_bn", "vgg8"),
        ("WRN-40-2", "wrn_40_2"),
        (" resnet8x4 ", "resnet8x4"),
    ],
)
def test_aliases_and_case(alias: str, canonical: str) -> None:
    assert create_model(alias).arch == canonical


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(RecipeError) as info:
        create_model("resnet8x8")
    msg = str(info.value)
    assert "resnet8x8" in msg and "did you mean" in msg and "resnet8x4" in msg
    assert "list_models()" in msg and "wrn_40_2" in msg  # the valid names are all there
    assert "\n" not in msg
    assert isinstance(info.value, RichKDError)


def test_unknown_name_without_close_match() -> None:
    with pytest.raises(RecipeError, match="valid names are") as info:
        create_model("efficientnet_b7")
    assert "did you mean" not in str(info.value)


def test_num_classes_and_bad_options() -> None:
    model = create_model("resnet8", num_classes=10)
    assert model.num_classes == 10
    assert model(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 10)
    assert create_model("ShuffleV1", num_classes=7).get_classifier().out_features == 7
    assert isinstance(create_model("resnet8"), CifarResNet)
    assert isinstance(create_model("ShuffleV1"), ShuffleNetV1)
    with pytest.raises(RecipeError, match="does not take option"):
        create_model("resnet8", widen=2)
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(RecipeError, match="positive integer"):
            create_model("resnet8", num_classes=bad)


def test_duplicate_registration_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_model(name="resnet8")
        def _clash(num_classes: int = 100) -> nn.Module:  # pragma: no cover -- never built
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):

        @register_model(name="brand_new_model", aliases=("RESNET50",))
        def _alias_clash(num_classes: int = 100) -> nn.Module:  # pragma: no cover -- never built
            raise AssertionError
