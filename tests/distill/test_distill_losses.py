"""kd_loss and fuse against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from richkd_deploy.distill.losses import fuse, kd_loss


def _softmax(z: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_hand_computation():
    s = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    temp = 2.0
    expected = 0.0
    for s_row, t_row in zip(s, t, strict=True):
        p, q = _softmax(t_row, temp), _softmax(s_row, temp)
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    expected = expected / 2 * temp**2  # batch mean, times T^2
    got = kd_loss(torch.tensor(s), torch.tensor(t), temp)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the same numbers pinned: T^2 * KL per row is 0.882058 and 1.346692
    assert got.item() == pytest.approx((0.882058 + 1.346692) / 2, rel=1e-5)


def test_kd_loss_zero_for_identical_logits_and_fp16_input():
    z = torch.randn(4, 10)
    assert kd_loss(z, z, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z.half(), (z + 1).half(), 3.0).dtype == torch.float32


def test_fuse_formula():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    torch.testing.assert_close(fuse(a, b, 0.7), torch.tensor([0.7 * 1 + 0.3 * 3, 0.7 * 2 + 0.3 * -1]))
    torch.testing.assert_close(fuse(a, b, 1.0), a)
    torch.testing.assert_close(fuse(a, b, 0.0), b)
