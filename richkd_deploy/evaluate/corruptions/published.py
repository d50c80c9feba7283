"""The published corruption datasets, read from disk (`validate.corruptions.source`).

Users who have them prefer the files everyone reports against to our regenerated
corruptions. Two layouts exist and both are accepted:

* CIFAR-10-C / CIFAR-100-C: ``<source>/<name>.npy`` holding uint8 [5 * M, H, W, 3]
  (the five severities in order, M images each) and ``<source>/labels.npy``
  (M or 5 * M labels).
* ImageNet-C (and Tiny-ImageNet-C): ``<source>/<name>/<severity>/<class>/<image>``.
  Labels come from the class folder's name looked up in the model's class list, so
  the folders need not hold every class and their order does not matter.

Either way a cell comes back as (uint8 [n, 3, H, W] images, int64 [n] labels), so the
harness treats it exactly like a cell it corrupted itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from richkd_deploy.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp"})


def load_published(source: Path | str, name: str, severity: int, n: int | None = None, *,
                   classes: Sequence[str] | None = None, size: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """One (corruption, severity) cell of a published corruption dataset.

    `n` caps the images (CIFAR-C: the first n; ImageNet-C: n spread evenly over the
    sorted file list, so every class folder is represented). `classes` is the
    model's class list, required for the ImageNet-C layout. `size` resizes images
    whose side differs (bilinear, antialiased), as the eval transform would.
    Missing or malformed files raise DataError with what to put where.
    """
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be an integer 1..5, got {severity!r}")
    severity = int(severity)
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"corruption dataset folder {folder} does not exist; download CIFAR-10-C/CIFAR-100-C "
                        "or ImageNet-C and pass its folder as validate.corruptions.source")
    if (folder / name).is_dir():
        images, labels = _load_folder_cell(folder, name, severity, n, classes)
    else:
        images, labels = _load_npy_cell(folder, name, severity, n)
    if size is not None and images.shape[-1] != size and len(images):
        images = _resize_u8(images, size)
    return images, labels


def _load_npy_cell(folder: Path, name: str, severity: int, n: int | None) -> tuple[torch.Tensor, np.ndarray]:
    images_path, labels_path = folder / f"{name}.npy", folder / "labels.npy"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise DataError(f"{path} is missing; expected <name>.npy and labels.npy (CIFAR-10-C layout) or "
                            f"<name>/<severity>/<class>/ folders (ImageNet-C layout) in {folder}")
    try:
        data = np.load(images_path, mmap_mode="r")
        labels = np.load(labels_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {images_path} or {labels_path}: {exc}") from exc
    if data.ndim != 4 or data.shape[-1] != 3 or data.shape[0] % 5 or data.dtype != np.uint8:
        raise DataError(f"{images_path} must be uint8 [5*M, H, W, 3], got {data.dtype} {data.shape}")
    per = data.shape[0] // 5
    if labels.ndim != 1 or labels.shape[0] not in (per, 5 * per):
        raise DataError(f"{labels_path} must hold {per} or {5 * per} labels, got shape {labels.shape}")
    count = per if n is None else min(int(n), per)
    start = (severity - 1) * per
    chunk = np.array(data[start : start + count])  # a writable copy, not a view of the memory map
    label_start = start if labels.shape[0] == 5 * per else 0
    y = np.asarray(labels[label_start : label_start + count]).astype(np.int64)
    return torch.from_numpy(chunk).permute(0, 3, 1, 2).contiguous(), y


def _load_folder_cell(folder: Path, name: str, severity: int, n: int | None,
                      classes: Sequence[str] | None) -> tuple[torch.Tensor, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    cell = folder / name / str(severity)
    if not cell.is_dir():
        raise DataError(f"{cell} is missing; the ImageNet-C layout is <source>/<name>/<severity 1-5>/<class>/<image>")
    if classes is None:
        raise DataError("the ImageNet-C layout needs the model's class list to label its class folders")
    index = {c: i for i, c in enumerate(classes)}
    files: list[tuple[Path, int]] = []
    for class_dir in sorted(p for p in cell.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if class_dir.name not in index:
            raise DataError(f"{class_dir}: class folder {class_dir.name!r} is not one of the model's "
                            f"{len(index)} classes (e.g. {', '.join(list(index)[:3])}); is this the right dataset?")
        label = index[class_dir.name]
        files += [(p, label) for p in sorted(class_dir.iterdir())
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise DataError(f"{cell} holds no images in class folders")
    if n is not None and n < len(files):
        picks = np.linspace(0, len(files) - 1, num=int(n)).round().astype(int) if n else np.array([], dtype=int)
        files = [files[i] for i in picks]
    arrays = []
    for path, _ in files:
        try:
            with Image.open(path) as img:
                arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: not a readable image ({exc}); replace or delete it") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{cell}: images of different sizes {sorted(shapes)[:3]}; the published sets are one size")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() if arrays \
        else torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
    return images, np.asarray([label for _, label in files], dtype=np.int64)


def _resize_u8(images: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)
