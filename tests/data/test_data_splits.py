"""`limit` subsets and the calibration holdout: stratified, seeded, re-indexed."""

from __future__ import annotations

import numpy as np
import pytest

from richkd_deploy.data import ImageArrayDataset, build_dataset, holdout_split, stratified_indices
from richkd_deploy.errors import DataError


def _dataset(counts: list[int]) -> ImageArrayDataset:
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.zeros((labels.size, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(labels.size) % 256  # tag rows to check the copy
    images[:, 0, 0, 1] = np.arange(labels.size) // 256
    return ImageArrayDataset(images, labels, [f"c{i}" for i in range(len(counts))], name="toy")


def _rows(ds: ImageArrayDataset) -> np.ndarray:
    return ds.images[:, 0, 0, 0].astype(np.int64) + 256 * ds.images[:, 0, 0, 1].astype(np.int64)


def test_limit_is_balanced_seeded_and_covers_classes() -> None:
    labels = np.repeat(np.arange(10), [500, 50, 300, 7, 100, 100, 100, 100, 100, 100])
    a = stratified_indices(labels, 100, seed=1)
    assert a.size == 100 and np.unique(a).size == 100 and (np.diff(a) > 0).all()
    counts = np.bincount(labels[a], minlength=10)
    assert counts[3] == 7 and counts.min() >= 7  # the small class gives all it has
    assert counts.max() - counts[counts > 7].min() <= 1  # the rest balanced
    np.testing.assert_array_equal(a, stratified_indices(labels, 100, seed=1))
    assert not np.array_equal(a, stratified_indices(labels, 100, seed=2))
    few = stratified_indices(labels, 10, seed=0)
    assert set(labels[few]) == set(range(10))  # n == classes: one of each


def test_limit_through_build_dataset() -> None:
    full = _dataset([30, 30, 30])
    from richkd_deploy.data import limit_dataset

    small = limit_dataset(full, 10, seed=0)
    assert len(small) == 10 and sorted(np.bincount(small.labels).tolist()) == [3, 3, 4]
    assert limit_dataset(full, 1000, seed=0) is full
    ds = build_dataset("synthetic", "train", limit=55, seed=4)
    assert len(ds) == 55 and np.bincount(ds.labels).min() == 5
    with pytest.raises(DataError, match="positive"):
        build_dataset("synthetic", "train", limit=0)


def test_holdout_disjoint_covering_stratified() -> None:
    ds = _dataset([100, 40, 60, 3])
    train, hold = holdout_split(ds, 0.1, seed=0)
    assert len(train) + len(hold) == len(ds) and len(hold) == 20
    rows_t, rows_h = _rows(train), _rows(hold)
    assert not set(rows_t) & set(rows_h)
    assert sorted(set(rows_t) | set(rows_h)) == list(range(len(ds)))
    np.testing.assert_array_equal(ds.labels[rows_h], hold.labels)  # labels travel with their rows
    assert np.bincount(hold.labels, minlength=4)[:3].tolist() == [10, 4, 6]
    # re-indexed from 0 in each part
    assert train[0][2] == 0 and hold[len(hold) - 1][2] == len(hold) - 1
    again_t, again_h = holdout_split(ds, 0.1, seed=0)
    np.testing.assert_array_equal(_rows(again_h), rows_h)
    _, other = holdout_split(ds, 0.1, seed=1)
    assert not np.array_equal(_rows(other), rows_h)


def test_holdout_keeps_transform_and_rejects_bad_fractions() -> None:
    ds = _dataset([10, 10]).with_transform(lambda im: im)
    train, hold = holdout_split(ds, 0.5, seed=0)
    assert train.transform is ds.transform and hold.transform is ds.transform
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(DataError, match="holdout_fraction"):
            holdout_split(ds, bad, seed=0)
    with pytest.raises(DataError, match="empty"):
        holdout_split(_dataset([1, 1]), 0.1, seed=0)
