"""The reference `forward_check`: same names and shapes do not prove the same wiring,
so every model is filled with the JSON's deterministic weights and its logits are
compared with the reference implementation's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from richkd_deploy.models import create_model, export_view, list_models, load_state_dict_strict

REL_TOL = 1e-4


@pytest.mark.parametrize("name", list_models())
def test_forward_check(
    name: str,
    reference_models: dict[str, Any],
    fill: Callable[[list[list[Any]]], dict[str, torch.Tensor]],
    fixed_input: torch.Tensor,
) -> None:
    if name not in reference_models:
        pytest.skip(f"{name} has no entry in the reference JSON")
    ref = reference_models[name]
    check = ref["forward_check"]
    model = create_model(name).eval()
    load_state_dict_strict(model, fill(ref["state_dict"]), source=f"forward_check fill for {name}")
    with torch.no_grad():
        logits, feats = model(fixed_input)

    first5 = torch.tensor(check["logits_first5"], dtype=torch.float64)
    got5 = logits[:, :5].double()
    rel = ((got5 - first5).abs().max() / first5.abs().max()).item()
    assert rel < REL_TOL, f"logits_first5 differ by {rel:.2e} relative"

    # A sum of positive and negative logits can nearly cancel, so it is judged
    # against the sum of magnitudes.
    sums = logits.double().sum(1)
    scale = torch.tensor(check["logits_abs_sum"], dtype=torch.float64)
    torch.testing.assert_close(logits.double().abs().sum(1), scale, rtol=REL_TOL, atol=0)
    assert ((sums - torch.tensor(check["logits_sum"], dtype=torch.float64)).abs() / scale).max() < REL_TOL

    torch.testing.assert_close(
        feats.double().sum(1), torch.tensor(check["pooled_feat_sum"], dtype=torch.float64), rtol=REL_TOL, atol=1e-6
    )
    assert logits.argmax(1).tolist() == check["argmax"]

    with torch.no_grad():  # the exported view computes exactly the same logits
        torch.testing.assert_close(export_view(model)(fixed_input), logits, rtol=0, atol=0)


def _fmix32_reference(key: int) -> float:
    """The recipe's hash written out in plain Python, one value at a time."""
    h = key % 2**32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) % 2**32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) % 2**32
    h ^= h >> 16
    return h / 2**32 * 2 - 1


def test_vectorised_hash_matches_plain_python(uniform: Callable[[int, int], Any]) -> None:
    for i in (0, 1, 7, 319, 999999):
        expected = [_fmix32_reference(i * 1000003 + j) for j in range(50)]
        assert uniform(i, 50).tolist() == expected


def test_forward_check_is_input_sensitive(
    reference_models: dict[str, Any],
    fill: Callable[[list[list[Any]]], dict[str, torch.Tensor]],
    fixed_input: torch.Tensor,
) -> None:
    """Guard against a vacuous check: another input must give clearly other logits."""
    ref = reference_models["resnet8"]
    model = create_model("resnet8").eval()
    load_state_dict_strict(model, fill(ref["state_dict"]), source="fill")
    with torch.no_grad():
        other = model(fixed_input.flip(-1))[0][:, :5].double()
    first5 = torch.tensor(ref["forward_check"]["logits_first5"], dtype=torch.float64)
    assert ((other - first5).abs().max() / first5.abs().max()).item() > 1e-2
