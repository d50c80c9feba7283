"""TensorRT build decisions per version and recipe, without TensorRT."""

from __future__ import annotations

import pytest

from exporters.trt_plan import ShapeProfile, parse_version, plan_build, profile_from_recipe
from richkd_deploy.errors import MissingDependencyError, RecipeError
from richkd_deploy.recipe import TrtConfig
from richkd_deploy.runtime import split_batches


@pytest.mark.parametrize("text, expected", [("10.3.0.26", (10, 3, 0)), ("11.0.0", (11, 0, 0)), ("10.13.2.post1", (10, 13, 2)),
                                            ("11.4", (11, 4, 0))])
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    v = parse_version(text)
    assert (v.major, v.minor, v.patch) == expected


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_version("latest")


@pytest.mark.parametrize("precision, flags", [("fp16", ("FP16",)), ("int8", ("INT8", "FP16"))])
def test_tensorrt_10_is_weakly_typed_with_precision_flags(precision: str, flags: tuple[str, ...]) -> None:
    plan = plan_build("10.3.0", precision)
    assert plan.network_flags == ()
    assert plan.builder_flags == flags
    assert plan.source_precision == precision


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_11_is_strongly_typed_without_precision_flags(precision: str) -> None:
    plan = plan_build("11.1.0", precision)
    assert plan.network_flags == ("STRONGLY_TYPED",)
    assert plan.builder_flags == ()  # BuilderFlag.FP16/INT8 no longer exist
    assert plan.source_precision == precision  # precision comes from the FP16 / Q/DQ graph


def test_old_tensorrt_and_fp32_engines_are_refused() -> None:
    with pytest.raises(MissingDependencyError, match=">= 10"):
        plan_build("8.6.1", "fp16")
    with pytest.raises(RecipeError, match="fp32"):
        plan_build("10.3.0", "fp32")


def test_profile_from_recipe() -> None:
    p = profile_from_recipe(TrtConfig(min_batch=1, opt_batch=32, max_batch=64), (3, 32, 32))
    assert p == ShapeProfile("input", (1, 3, 32, 32), (32, 3, 32, 32), (64, 3, 32, 32))
    assert p.max_batch == 64
    assert ShapeProfile.from_dict(p.to_dict()) == p


def test_profile_rejects_bad_ranges() -> None:
    with pytest.raises(RecipeError, match="min_batch <= opt_batch"):
        profile_from_recipe(TrtConfig(min_batch=8, opt_batch=4, max_batch=64), (3, 32, 32))
    with pytest.raises(RecipeError, match=r"\(C, H, W\)"):
        profile_from_recipe(TrtConfig(), (32, 32))


def test_split_batches() -> None:
    assert split_batches(130, 64) == [slice(0, 64), slice(64, 128), slice(128, 130)]
    assert split_batches(0, 64) == []
    with pytest.raises(ValueError):
        split_batches(3, 0)
