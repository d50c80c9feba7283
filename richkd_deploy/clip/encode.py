"""One pass of frozen CLIP over a dataset's raw images, with CLIP's own preprocessing:
shared by the target cache build and the zero-shot check."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from richkd_deploy.clip.loader import LoadedClip
from richkd_deploy.precision import autocast


def clip_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """CLIP runs in float16 on CUDA (its cache was always built that way), float32 elsewhere."""
    return autocast(device, device.type == "cuda", dtype=torch.float16)


class _RawView(Dataset):
    """Dataset items -> (CLIP-preprocessed raw image, dataset index), for a DataLoader."""

    def __init__(self, dataset: Any, indices: Sequence[int], preprocess: Callable[[Any], Tensor]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        idx = self.indices[i]
        return self.preprocess(self.dataset.raw(idx)), idx


def encode_dataset(loaded: LoadedClip, dataset: Any, indices: Sequence[int], device: torch.device,
                   batch_size: int, num_workers: int, desc: str,
                   quiet: bool) -> Iterator[tuple[np.ndarray, Tensor]]:
    """Yield `(dataset indices, image features float32 [b, D] on device)` batch by batch."""
    loader = DataLoader(_RawView(dataset, indices, loaded.preprocess), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    with torch.no_grad(), tqdm(total=len(indices), desc=desc, unit="img", disable=quiet, leave=False) as bar:
        for images, idx in loader:
            images = images.to(device, non_blocking=True)
            with clip_autocast(device):
                feats = loaded.model.encode_image(images)  # type: ignore[operator]
            yield idx.numpy(), feats.float()
            bar.update(len(idx))
