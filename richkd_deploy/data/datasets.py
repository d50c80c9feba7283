"""The dataset types every other module sees.

Both return ``(image, label, index)`` from `__getitem__`: the index is the sample's
position in *this* dataset object, because CRD's memory bank and the cached CLIP
targets are rows addressed by it. `subset` (and so `limit` and `holdout_split`)
re-numbers from 0, so those caches must be built for the dataset actually trained on.

A transform is any callable taking one RGB image as a **uint8 HWC numpy array** and
returning a float32 CHW tensor (`transforms.py` provides them; they also accept PIL
images and uint8 CHW tensors). Without a transform the image is returned as float32
in [0, 1]. A transform may also offer ``apply_batch(uint8 [N,H,W,3]) -> float32
[N,C,H,W]``, which the in-memory dataset uses when a DataLoader asks for a batch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from richkd_deploy.data.loader import fetch_batch, seeded_rng
from richkd_deploy.data.transforms import resize_uint8
from richkd_deploy.errors import DataError

Transform = Callable[[Any], torch.Tensor]


def _as_index_array(indices: Sequence[int] | np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index out of range for a dataset of {n} samples")
    return np.where(idx < 0, idx + n, idx)


def to_float_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float32 CHW in [0, 1]: the no-transform default."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class IndexedDataset(torch.utils.data.Dataset):
    """What the two dataset types share: labels, class names, transform views and
    seeded batch fetching (see `loader.py`)."""

    supports_seeded_batches = True
    labels: np.ndarray
    classes: list[str]
    transform: Transform | None
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _load(self, index: int) -> np.ndarray:
        """uint8 HWC RGB image `index`, unaugmented."""
        raise NotImplementedError

    def _position(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return i

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        i = self._position(index)
        image = self._load(i)
        tensor = self.transform(image) if self.transform is not None else to_float_tensor(image)
        return tensor, int(self.labels[i]), i

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int, int]]:
        return fetch_batch(self, indices)

    def raw(self, index: int) -> Image.Image:
        """Image `index` as an RGB PIL image, unaugmented (for CLIP's own preprocessing)."""
        return Image.fromarray(self._load(self._position(index)))

    def with_transform(self, transform: Transform | None) -> IndexedDataset:
        """A view with another transform, sharing the images (no copy)."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def class_counts(self) -> np.ndarray:
        """Samples per class, length num_classes."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> IndexedDataset:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n={len(self)}, classes={self.num_classes}, transform={self.transform!r})"


class ImageArrayDataset(IndexedDataset):
    """A small dataset held in memory as one uint8 NHWC RGB array (CIFAR, Fashion-MNIST,
    synthetic): indexing is a slice, so the data loader is never disk-bound."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                 transform: Transform | None = None, name: str = "array") -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise DataError(f"{name}: images must be uint8 [N,H,W,3] (or [N,H,W,1]), got {images.dtype} "
                            f"{list(images.shape)}; convert them before building the dataset")
        if images.shape[3] == 1:
            images = np.repeat(images, 3, axis=3)
        labels = np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels; the files do not match")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{name}: labels must be in 0..{len(classes) - 1}, found {labels.min()}..{labels.max()}; "
                            "the label file does not match the class list")
        if not images.flags.writeable or not images.flags.c_contiguous:
            images = np.array(images, order="C")  # torch.from_numpy needs writable memory
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.transform = transform
        self.name = name
        self._fingerprint: str | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def _load(self, index: int) -> np.ndarray:
        return self.images[index]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int, int]]:
        """A batch for the DataLoader. A transform with `apply_batch` (ours) gets all
        images at once, which is several times faster than one call per image."""
        apply_batch = getattr(self.transform, "apply_batch", None)
        if apply_batch is None:
            return fetch_batch(self, indices)
        idx = _as_index_array(indices, len(self))
        seed = getattr(indices, "seed", None)
        with seeded_rng(seed) if seed is not None else contextlib.nullcontext():
            batch = apply_batch(self.images[idx])
        return list(zip(batch.unbind(0), self.labels[idx].tolist(), idx.tolist(), strict=True))

    def uint8_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor,
                    size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Images as a torch.uint8 [n,3,H,W] batch, unaugmented (corruption evaluation);
        resized to `size` when given."""
        idx = _as_index_array(indices, len(self))
        batch = torch.from_numpy(np.ascontiguousarray(self.images[idx].transpose(0, 3, 1, 2)))
        if size is not None:
            batch = resize_uint8(batch, size)
        return batch

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageArrayDataset:
        """A new dataset holding a copy of the selected rows, indexed 0..n-1 in the order given."""
        idx = _as_index_array(indices, len(self))
        return ImageArrayDataset(self.images[idx], self.labels[idx], self.classes, self.transform, self.name)

    def fingerprint(self) -> str:
        """Content hash of images, labels and class names: a key for caches indexed by
        sample position (CLIP targets), which go stale when the subset changes."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((self.images.shape, self.classes)).encode())
            h.update(self.labels.tobytes())
            h.update(memoryview(self.images).cast("B"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint
