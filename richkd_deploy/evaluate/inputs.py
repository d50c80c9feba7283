"""The checks every metric runs on its inputs: logits float [N, K] (numpy or torch CPU),
labels integer [N] in [0, K). Bad arguments are the caller's programming errors and
raise ValueError; the checked arrays come back as float64 / int64 numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    z = as_array(logits)
    if z.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, K], got shape {z.shape}")
    if z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"{name} must have at least one sample and one class, got shape {z.shape}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {z.dtype}")
    z = z.astype(np.float64, copy=False)
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return z


def check(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = check_logits(logits)
    y = as_array(labels)
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"labels must be 1-D with one label per row of logits {z.shape}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1]}), got range [{y.min()}, {y.max()}]")
    return z, y.astype(np.int64, copy=False)


def check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)
