"""Fashion-MNIST from its IDX files (Debian's dataset-fashion-mnist package, or any
folder with the four files, gzipped or not).

The 28x28 grey images are given 3 channels and zero-padded to 32x32 (2 pixels each
side) so the CIFAR architectures take them unchanged. The padding is part of the
data: normalisation statistics (transforms.py) are computed on the padded images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from richkd_deploy.data.class_names import FASHION_MNIST_CLASSES
from richkd_deploy.data.datasets import ImageArrayDataset
from richkd_deploy.data.idx import read_idx
from richkd_deploy.errors import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
PAD = 2
_PREFIX = {"train": "train", "test": "t10k"}
_FIX = "apt-get install dataset-fashion-mnist, or put the four IDX files into data.root"


def _find(root: Path, stem: str) -> Path | None:
    """`stem` or `stem`.gz in root or in torchvision's FashionMNIST/raw layout."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def fashion_mnist_files(root: Path, split: str) -> tuple[Path, Path]:
    """(images, labels) file paths of `split`; DataError saying how to get them when absent."""
    prefix = _PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    found = [_find(root, s) for s in stems]
    missing = [s for s, f in zip(stems, found, strict=True) if f is None]
    if missing:
        raise DataError(f"Fashion-MNIST not found: {root} lacks {', '.join(m + '[.gz]' for m in missing)}; {_FIX}")
    return found[0], found[1]  # type: ignore[return-value]


def pad_to_rgb32(grey: np.ndarray, pad: int = PAD) -> np.ndarray:
    """uint8 [N,28,28] -> uint8 [N,32,32,3], zero border of `pad` pixels."""
    n, h, w = grey.shape
    out = np.zeros((n, h + 2 * pad, w + 2 * pad, 3), dtype=np.uint8)
    out[:, pad:pad + h, pad:pad + w, :] = grey[:, :, :, None]
    return out


def load_fashion_mnist(split: str, root: str | Path | None = None) -> ImageArrayDataset:
    """Fashion-MNIST `split` ("train" 60000 / "test" 10000) as padded RGB 32x32."""
    root = Path(root).expanduser() if root is not None else DEFAULT_ROOT
    image_path, label_path = fashion_mnist_files(root, split)
    images = read_idx(image_path, expect_ndim=3, fix=f"replace the file: {_FIX}")
    labels = read_idx(label_path, expect_ndim=1, fix=f"replace the file: {_FIX}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{image_path} holds {images.shape[0]} images but {label_path} {labels.shape[0]} labels; {_FIX}")
    if images.dtype != np.uint8 or labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{image_path.parent}: these IDX files are not Fashion-MNIST (wrong type or labels); {_FIX}")
    return ImageArrayDataset(pad_to_rgb32(images), labels.astype(np.int64), FASHION_MNIST_CLASSES, name="fashion-mnist")
