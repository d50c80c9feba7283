"""The generated dataset: deterministic, balanced, and with class-dependent images."""

from __future__ import annotations

import numpy as np

from richkd_deploy.data import build_dataset


def test_sizes_balance_and_determinism() -> None:
    train, test = build_dataset("synthetic", "train"), build_dataset("synthetic", "test")
    assert train.images.shape == (2000, 32, 32, 3) and len(test) == 500
    assert (train.class_counts() == 200).all() and train.classes[0] == "class 0"
    small = build_dataset("synthetic", "train", limit=100)
    again = build_dataset("synthetic", "train", limit=100)
    assert np.array_equal(again.images, small.images) and np.array_equal(again.labels, small.labels)
    other = build_dataset("synthetic", "train", limit=100, seed=1)
    assert not np.array_equal(other.images, small.images)
    assert not np.array_equal(test.images[:100], train.images[:100])


def test_classes_differ() -> None:
    ds = build_dataset("synthetic", "train", limit=1000)
    x = ds.images.astype(np.float32) / 255.0
    means = np.stack([x[ds.labels == k].mean(0) for k in range(10)])  # [10,32,32,3]
    colours = means.mean((1, 2))  # each class has its own hue
    dist = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert dist[~np.eye(10, dtype=bool)].min() > 0.03
    # stripe orientation: even classes vary along rows, odd classes along columns
    def row_vs_col(k: int) -> float:
        imgs = x[ds.labels == k].mean(-1)
        return float(np.abs(np.diff(imgs, axis=1)).mean() - np.abs(np.diff(imgs, axis=2)).mean())

    assert all(row_vs_col(k) > 0 for k in range(0, 10, 2))
    assert all(row_vs_col(k) < 0 for k in range(1, 10, 2))
