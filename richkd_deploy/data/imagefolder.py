"""A folder of image files: ``root/train/<class>/*`` and ``root/test/<class>/*``.

For users' own data, which may be too big for memory: images are decoded from disk
(PIL) when a sample is read. Sizes are kept; the transform resizes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from richkd_deploy.data.datasets import IndexedDataset, Transform, _as_index_array
from richkd_deploy.data.transforms import resize_uint8
from richkd_deploy.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff"})
_LAYOUT = "root/train/<class>/*.png|jpg and root/test/<class>/* (or root/val/<class>/*)"


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_folder(root: Path, split: str) -> Path:
    """The folder holding `split`: train/, or test/ with val/ accepted instead."""
    names = ["train"] if split == "train" else ["test", "val"]
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root} has no {' or '.join(n + '/' for n in names)} folder; arrange the images as {_LAYOUT}")


class ImageFolderIndexed(IndexedDataset):
    """Images listed from class folders; same interface as ImageArrayDataset but
    decoded lazily. Classes are the sorted folder names of train/ (so test labels
    match training labels even if a test class folder is missing)."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, classes: Sequence[str],
                 transform: Transform | None = None, name: str = "imagefolder", root: Path | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = list(classes)
        self.transform = transform
        self.name = name
        self.root = root

    @classmethod
    def from_root(cls, root: str | Path, split: str) -> ImageFolderIndexed:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"data.root: {root} is not a folder; point it at a folder laid out as {_LAYOUT}")
        folder = split_folder(root, split)
        train_dir = root / "train"
        classes = _class_dirs(train_dir) if train_dir.is_dir() else _class_dirs(folder)
        if not classes:
            raise DataError(f"{train_dir if train_dir.is_dir() else folder} has no class folders; arrange the images as {_LAYOUT}")
        extra = sorted(set(_class_dirs(folder)) - set(classes))
        if extra:
            raise DataError(f"{folder} has class folders that train/ lacks ({', '.join(extra[:5])}); "
                            "give both splits the same class folders")
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            d = folder / name
            if not d.is_dir():
                continue
            files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); arrange them as {_LAYOUT}")
        return cls(paths, np.asarray(labels, dtype=np.int64), classes, None, "imagefolder", root)

    def _load(self, index: int) -> np.ndarray:
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                return np.array(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image {path} ({e}); delete or replace the file") from e

    def uint8_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor,
                    size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Images as a torch.uint8 [n,3,H,W] batch, unaugmented; resized to `size` when
        given. Images of different sizes need `size`."""
        idx = _as_index_array(indices, len(self))
        images = [torch.from_numpy(self._load(int(i))).permute(2, 0, 1) for i in idx]
        if size is not None:
            images = [resize_uint8(im, size) for im in images]
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise DataError(f"{self.root}: images differ in size ({', '.join(str(s[1:]) for s in list(shapes)[:3])}); "
                            "pass a size (e.g. data.input_size) to resize them")
        if not images:
            return torch.empty((0, 3, 0, 0), dtype=torch.uint8)
        return torch.stack(images).contiguous()

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageFolderIndexed:
        """A new dataset of the selected files, indexed 0..n-1 in the order given."""
        idx = _as_index_array(indices, len(self))
        return ImageFolderIndexed([self.paths[i] for i in idx], self.labels[idx], self.classes,
                                  self.transform, self.name, self.root)

    def fingerprint(self) -> str:
        """Hash of file paths, sizes, modification times and labels (not pixels: too
        slow for big folders), for caches indexed by sample position."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(self.classes).encode())
        for path, label in zip(self.paths, self.labels.tolist(), strict=True):
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
        return h.hexdigest()
