"""Seeded, class-stratified selections: `limit` subsets and the calibration holdout.

Both keep class proportions so a small smoke run still sees every class and the
holdout used for temperature scaling is not skewed. Both return datasets re-indexed
0..n-1: the CLIP target cache and CRD's memory bank must be built for the dataset
actually trained on (the train part), not for the full training set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from richkd_deploy.errors import DataError


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**64, salt]))


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of `n` samples, as class-balanced as the data allows: classes
    take turns, each giving its next randomly chosen sample, and classes that run out
    drop out of the rotation (so every class is covered when n >= num_classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    total = labels.shape[0]
    if n >= total:
        return np.arange(total, dtype=np.int64)
    rng = _rng(seed, 1)
    order = rng.permutation(total)
    shuffled = labels[order]
    # rank of each sample within its class in the shuffled order
    by_class = np.argsort(shuffled, kind="stable")
    sorted_labels = shuffled[by_class]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(total, dtype=np.int64)
    rank[by_class] = np.arange(total) - starts
    # Round r takes rank r of every class, classes in a random order each round.
    class_order = rng.permutation(int(labels.max()) + 1 if total else 0)
    key = rank * (class_order.size + 1) + class_order[shuffled]
    chosen = order[np.argsort(key, kind="stable")[:n]]
    return np.sort(chosen)


def limit_dataset(dataset: Any, limit: int | None, seed: int) -> Any:
    """`dataset` cut to a seeded, class-balanced subset of `limit` samples (unchanged
    when limit is None or not smaller than the dataset)."""
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise DataError(f"limit must be a positive number of samples, got {limit}")
    return dataset.subset(stratified_indices(dataset.labels, int(limit), seed))


def holdout_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) sorted index arrays: per class, a seeded random `fraction`
    (largest-remainder rounding so the total is round(fraction * n))."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    counts = np.bincount(labels) if n else np.zeros(0, dtype=np.int64)
    exact = counts * float(fraction)
    take = np.floor(exact).astype(np.int64)
    rng = _rng(seed, 2)
    short = int(round(float(fraction) * n)) - int(take.sum())
    if short > 0:  # largest remainders first, random tie-break
        remainder = exact - take
        pick = np.lexsort((rng.random(counts.size), -remainder))[:short]
        take[pick] += 1
    order = rng.permutation(n)
    shuffled = labels[order]
    held = np.zeros(n, dtype=bool)
    for c in np.nonzero(take)[0]:
        held[order[shuffled == c][: take[c]]] = True
    return np.nonzero(~held)[0], np.nonzero(held)[0]


def holdout_split(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train part, holdout part) of a training set, stratified and seeded, for
    temperature-scaling calibration. The parts are disjoint, cover the dataset, keep
    its transform, and are each indexed 0..n-1 (see the module docstring)."""
    if not 0.0 < float(fraction) < 1.0:
        raise DataError(f"data.holdout_fraction: must be between 0 and 1 (exclusive), got {fraction}")
    kept, held = holdout_indices(dataset.labels, fraction, seed)
    if kept.size == 0 or held.size == 0:
        raise DataError(f"data.holdout_fraction: {fraction} of {len(dataset)} samples leaves an empty part; "
                        "use more samples or another fraction")
    return dataset.subset(kept), dataset.subset(held)
