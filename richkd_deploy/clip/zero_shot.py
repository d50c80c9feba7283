"""CLIP's zero-shot accuracy on a dataset: the check that its targets are worth distilling."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from richkd_deploy.clip.encode import encode_dataset
from richkd_deploy.clip.loader import LoadedClip
from richkd_deploy.clip.prompts import ZeroShotHead


def evaluate_zero_shot(loaded: LoadedClip, head: ZeroShotHead, dataset: Any, device: torch.device | str = "cpu",
                       batch_size: int = 128, limit: int | None = None, num_workers: int = 0,
                       quiet: bool = False) -> tuple[float, int]:
    """CLIP's zero-shot top-1 (fraction) on `dataset` with CLIP's own preprocessing, on
    `limit` evenly spaced images (all when None): `(accuracy, images used)`."""
    device = torch.device(device)
    n = len(dataset)
    if limit is not None and limit < n:
        indices = np.unique(np.linspace(0, n - 1, num=limit).round().astype(np.int64)).tolist()
    else:
        indices = list(range(n))
    labels = np.asarray(dataset.labels, dtype=np.int64)
    correct = 0
    for idx, feats in encode_dataset(loaded, dataset, indices, device, batch_size, num_workers,
                                     "CLIP zero-shot", quiet):
        correct += int((head(feats).argmax(1).cpu().numpy() == labels[idx]).sum())
    return correct / max(len(indices), 1), len(indices)
