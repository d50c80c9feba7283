"""The `export.int8` recipe section."""

from __future__ import annotations

from pathlib import Path

import pytest

from richkd_deploy import recipe
from richkd_deploy.errors import RecipeError

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "smoke.yaml"


def test_defaults_and_overrides() -> None:
    r = recipe.load(SMOKE)
    q = r.export.int8
    assert (q.method, q.per_channel, q.symmetric_activations, q.search, q.fallback) == \
        ("minmax", True, True, False, True)
    assert q.images(r.export.calibration_images) == 64  # the older key still sets the size
    r = recipe.load(SMOKE, ["export.int8.method=entropy", "export.int8.calibration_images=32",
                            "export.int8.search=true", "export.int8.calibration_corruptions=['fog:2']"])
    assert r.export.int8.method == "entropy" and r.export.int8.images(r.export.calibration_images) == 32
    assert r.export.int8.search and r.export.int8.calibration_corruptions == ("fog:2",)
    assert q.qat_epochs == 0  # QAT is off unless asked for
    assert recipe.load(SMOKE, ["export.int8.qat_epochs=3"]).export.int8.qat_epochs == 3


@pytest.mark.parametrize("override, message", [
    ("export.int8.method=kl", "export.int8.method: got 'kl'"),
    ("export.int8.methd=minmax", "did you mean 'method'"),
    ("export.int8.calibration_images=0", "export.int8.calibration_images"),
    ("export.int8.calibration_corruptions=['fog:9']", "name:severity"),
    ("export.int8.qat_epochs=-1", "export.int8.qat_epochs"),
])
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe.load(SMOKE, [override])


def test_search_needs_a_holdout_split() -> None:
    with pytest.raises(RecipeError, match="holdout_fraction"):
        recipe.load(SMOKE, ["export.int8.search=true", "data.holdout_fraction=0"])
