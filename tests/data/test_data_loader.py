"""Reproducible loaders: the same seed gives the same batches and augmentations, for
num_workers 0 and 2, without touching the caller's random state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from richkd_deploy.data import build_dataset, default_mean_std, make_loader, train_transform


@pytest.fixture(scope="module")
def train_ds():
    ds = build_dataset("synthetic", "train", limit=200, seed=0)
    mean, std = default_mean_std("synthetic")
    return ds.with_transform(train_transform(32, mean, std))


def _first(loader, k: int = 2) -> list:
    it = iter(loader)
    return [next(it) for _ in range(k)]


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x, y) for ba, bb in zip(a, b, strict=True) for x, y in zip(ba, bb, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches(train_ds, workers: int) -> None:
    a = _first(make_loader(train_ds, 32, shuffle=True, num_workers=workers, seed=7))
    b = _first(make_loader(train_ds, 32, shuffle=True, num_workers=workers, seed=7))
    assert _same(a, b)
    images, labels, indices = a[0]
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and indices.dtype == torch.int64
    np.testing.assert_array_equal(train_ds.labels[indices.numpy()], labels.numpy())
    c = _first(make_loader(train_ds, 32, shuffle=True, num_workers=workers, seed=8))
    assert not torch.equal(a[0][2], c[0][2])


def test_workers_do_not_change_the_batches(train_ds) -> None:
    zero = _first(make_loader(train_ds, 50, shuffle=True, num_workers=0, seed=3), 4)
    two = _first(make_loader(train_ds, 50, shuffle=True, num_workers=2, seed=3), 4)
    assert _same(zero, two)


def test_augmentation_differs_between_iterations_and_order_is_kept(train_ds) -> None:
    loader = make_loader(train_ds, 20, shuffle=False, num_workers=0, seed=0)
    first, second = next(iter(loader)), next(iter(loader))
    assert torch.equal(first[2], torch.arange(20)) and torch.equal(second[2], torch.arange(20))
    assert not torch.equal(first[0], second[0])  # a new epoch draws new crops


def test_caller_rng_untouched(train_ds) -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    for _ in make_loader(train_ds, 64, shuffle=True, num_workers=0, seed=1):
        pass
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_foreign_dataset_and_sampler() -> None:
    base = TensorDataset(torch.arange(40).float())
    sub = Subset(base, list(range(10, 30)))
    loader = make_loader(sub, 8, shuffle=False, num_workers=0, seed=0, drop_last=True)
    batches = [b[0] for b in loader]
    assert len(batches) == 2 and torch.equal(batches[0], torch.arange(10, 18).float())
    assert len(loader.dataset) == 20
    sampler = torch.utils.data.SequentialSampler(range(5))
    loader = make_loader(TensorDataset(torch.arange(5)), 2, shuffle=False, num_workers=0, seed=0, sampler=sampler)
    assert [b[0].tolist() for b in loader] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="shuffle=False"):
        make_loader(base, 8, shuffle=True, num_workers=0, seed=0, sampler=sampler)
