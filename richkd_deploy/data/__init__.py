"""Data layer: datasets, augmentation, class names and reproducible loaders.

Every dataset yields ``(image float32 [3,H,W], label, index)`` where index is the
sample's position in that dataset object (the key of CRD's memory bank and the
CLIP target cache). Typical use::

    train = build_dataset("cifar100", "train", limit=None, seed=0)
    train, holdout = holdout_split(train, 0.1, seed=0)
    mean, std = default_mean_std("cifar100")
    train = train.with_transform(train_transform(32, mean, std))
    loader = make_loader(train, batch_size=64, shuffle=True, num_workers=2, seed=epoch_seed)
"""

from __future__ import annotations

from richkd_deploy.data.build import build_dataset
from richkd_deploy.data.class_names import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    DATASETS,
    FASHION_MNIST_CLASSES,
    SYNTHETIC_CLASSES,
    canonical_name,
    class_names,
)
from richkd_deploy.data.datasets import ImageArrayDataset, IndexedDataset
from richkd_deploy.data.idx import read_idx, write_idx
from richkd_deploy.data.imagefolder import ImageFolderIndexed
from richkd_deploy.data.loader import make_loader, seeded_rng
from richkd_deploy.data.splits import holdout_split, limit_dataset, stratified_indices
from richkd_deploy.data.transforms import (
    EvalTransform,
    Normalize,
    TrainTransform,
    default_mean_std,
    eval_transform,
    normalize_batch,
    resize_uint8,
    to_uint8_chw,
    train_transform,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "SYNTHETIC_CLASSES",
    "EvalTransform",
    "ImageArrayDataset",
    "ImageFolderIndexed",
    "IndexedDataset",
    "Normalize",
    "TrainTransform",
    "build_dataset",
    "canonical_name",
    "class_names",
    "default_mean_std",
    "eval_transform",
    "holdout_split",
    "limit_dataset",
    "make_loader",
    "normalize_batch",
    "read_idx",
    "resize_uint8",
    "seeded_rng",
    "stratified_indices",
    "to_uint8_chw",
    "train_transform",
    "write_idx",
]
