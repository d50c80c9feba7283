"""`build_dataset`: the one entry point from a recipe's data section to a dataset."""

from __future__ import annotations

from pathlib import Path

from richkd_deploy.data.cifar import load_cifar
from richkd_deploy.data.class_names import DATASETS, canonical_name
from richkd_deploy.data.datasets import ImageArrayDataset
from richkd_deploy.data.fashion_mnist import load_fashion_mnist
from richkd_deploy.data.imagefolder import ImageFolderIndexed
from richkd_deploy.data.splits import limit_dataset
from richkd_deploy.data.synthetic import make_synthetic
from richkd_deploy.errors import DataError

__all__ = ["DATASETS", "build_dataset"]


def build_dataset(name: str, split: str, root: str | Path | None = None, download: bool = True,
                  limit: int | None = None, seed: int = 0,
                  bad_files: str = "error") -> ImageArrayDataset | ImageFolderIndexed:
    """Dataset `name` ("cifar10", "cifar100", "fashion-mnist", "imagefolder",
    "synthetic"), split "train" or "test", without a transform (set one with
    `with_transform`).

    `root` is the data folder (each dataset has a default except imagefolder);
    `download` lets CIFAR be fetched when absent; `limit` keeps a seeded,
    class-balanced subset of that many samples (synthetic generates exactly that
    many). Missing data raises DataError saying where to put it. `bad_files`
    ("error" or "skip") is what an image folder does with unreadable files.
    """
    key = canonical_name(name)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and int(limit) < 1:
        raise DataError(f"data.{split}_limit: must be a positive number of samples, got {limit}")
    if key in ("cifar10", "cifar100"):
        dataset = load_cifar(key, split, root, download)
    elif key == "fashion-mnist":
        dataset = load_fashion_mnist(split, root)
    elif key == "imagefolder":
        if root is None:
            raise DataError("data.root: imagefolder needs a folder with train/ and test/ subfolders of class folders")
        dataset = ImageFolderIndexed.from_root(root, split, bad_files=bad_files)
    else:
        return make_synthetic(split, limit, seed)
    return limit_dataset(dataset, limit, seed)
