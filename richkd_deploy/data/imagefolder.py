"""A folder of image files: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``).

For users' own data, which may be too big for memory: only the list of paths is
held; images are decoded from disk (PIL) when a sample is read, in the DataLoader's
workers. Sizes are kept; the transform crops and resizes. torchvision's ImageNet
layout (``train/<wnid>/``, ``val/<wnid>/``) is this layout.

Real folders hold bad files: 0-byte or truncated downloads, non-images with an image
extension, CMYK JPEGs, 16-bit or palette PNGs, RGBA. Modes are converted properly
(16-bit scaled, not clipped); unreadable files are found before training by a
cheap scan (the header, plus the end marker of JPEG/PNG files, which a truncated
download lacks) and refused (`bad_files="error"`, the default: one error listing
them) or skipped (`"skip"`: one warning per file, with its path). A file that still
fails to decode mid-epoch is, under "skip", reported once and replaced by the next
good sample, so an epoch never dies on one image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from richkd_deploy.data.datasets import IndexedDataset, Transform, _as_index_array
from richkd_deploy.data.transforms import resize_uint8
from richkd_deploy.errors import DataError

log = logging.getLogger(__name__)
BAD_FILE_POLICIES = ("error", "skip")
_SCAN_TAIL = 64  # bytes read from the end of a JPEG/PNG to find its end marker

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
                 transform: Transform | None = None, name: str = "imagefolder", root: Path | None = None,
                 bad_files: str = "error") -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = list(classes)
        self.transform = transform
        self.name = name
        self.root = root
        self.bad_files = bad_files

    @classmethod
    def from_root(cls, root: str | Path, split: str, bad_files: str = "error") -> ImageFolderIndexed:
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
        if bad_files not in BAD_FILE_POLICIES:
            raise DataError(f"data.bad_files must be one of {', '.join(BAD_FILE_POLICIES)}, got {bad_files!r}")
        bad = scan_files(paths)
        if bad and bad_files == "error":
            shown = "; ".join(f"{p} ({why})" for p, why in list(bad.items())[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise DataError(f"{folder}: {len(bad)} unreadable image file(s): {shown}{more}; delete or replace "
                            "them, or set data.bad_files: skip to train without them")
        if bad:
            for p, why in bad.items():
                log.warning("skipping unreadable image %s (%s)", p, why)
            keep = [i for i, p in enumerate(paths) if p not in bad]
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
            if not paths:
                raise DataError(f"{folder}: none of its images can be read; check the files")
        return cls(paths, np.asarray(labels, dtype=np.int64), class_display_names(classes), None, "imagefolder",
                   root, bad_files)

    def _load(self, index: int) -> np.ndarray:
        path = self.paths[index]
        try:
            return decode_rgb(path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            if self.bad_files != "skip":
                raise DataError(f"cannot read image {path} ({e}); delete or replace the file, or set "
                                "data.bad_files: skip") from e
            if path not in _REPORTED:
                _REPORTED.add(path)
                log.warning("skipping unreadable image %s (%s); a neighbouring image is used in its place", path, e)
        for step in range(1, min(len(self.paths), 64)):  # the next good file stands in
            try:
                return decode_rgb(self.paths[(index + step) % len(self.paths)])
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
                continue
        raise DataError(f"{path} and the 63 images after it cannot be read; check the folder {self.root}")

    def uint8_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor,
                    size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Images as a torch.uint8 [n,3,H,W] batch, unaugmented; resized to `size` when
        given. Images of different sizes need `size`."""
        idx = _as_index_array(indices, len(self))
        prepare = getattr(self.transform, "prepare_uint8", None)  # the eval transform's crop + resize
        if prepare is not None and size is not None and tuple(self.transform.size) == _pair(size):
            images = [torch.from_numpy(np.ascontiguousarray(prepare(self._load(int(i))))).permute(2, 0, 1)
                      for i in idx]
        else:
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
                                  self.transform, self.name, self.root, self.bad_files)

    def fingerprint(self) -> str:
        """Hash of file paths, sizes, modification times and labels (not pixels: too
        slow for big folders), for caches indexed by sample position."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(self.classes).encode())
        for path, label in zip(self.paths, self.labels.tolist(), strict=True):
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
        return h.hexdigest()


_REPORTED: set[Path] = set()  # files already reported as unreadable in this process


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def decode_rgb(path: Path) -> np.ndarray:
    """uint8 HWC RGB pixels of any file PIL reads, converted the way each mode needs:
    CMYK and palette through PIL's conversion, 16-bit and 32-bit integer grey scaled
    to 8 bits (PIL's own convert would clip them to white), RGBA without its alpha
    channel (as torchvision's ImageFolder does). Raises the PIL/OS error of a bad file."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(im, dtype=np.float64)
            peak = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
            grey = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        if im.mode == "F":
            grey = np.clip(np.rint(np.asarray(im, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        return np.array(im.convert("RGB"))


def _tail_problem(path: Path, fmt: str | None, size: int) -> str | None:
    """A truncated JPEG lacks its end-of-image marker, a truncated PNG its IEND chunk."""
    if fmt not in ("JPEG", "PNG"):
        return None
    with open(path, "rb") as f:
        f.seek(max(0, size - _SCAN_TAIL))
        tail = f.read()
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG: no end-of-image marker"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG: no IEND chunk"
    return None


def scan_files(paths: Sequence[Path]) -> dict[Path, str]:
    """Files that cannot be images, found without decoding pixels: empty, not an
    image PIL recognises, or a JPEG/PNG cut short. A file flagged by the cheap end
    check is decoded fully before it is called bad (some writers pad after the marker)."""
    bad: dict[Path, str] = {}
    for path in paths:
        try:
            size = os.stat(path).st_size
            if size == 0:
                bad[path] = "empty file"
                continue
            with Image.open(path) as im:
                fmt = im.format
            problem = _tail_problem(path, fmt, size)
            if problem is not None:
                try:
                    decode_rgb(path)
                except (OSError, ValueError, SyntaxError):
                    bad[path] = problem
        except UnidentifiedImageError:
            bad[path] = "not an image PIL can read"
        except (OSError, ValueError, SyntaxError) as e:
            bad[path] = f"{type(e).__name__}: {e}"
    return bad


_WNID = re.compile(r"n\d{8}")


def class_display_names(folders: list[str]) -> list[str]:
    """Class names as people (and CLIP's prompts) read them. Folder names, except for
    torchvision's ImageNet layout -- the 1000 WordNet ids `n01440764`... -- whose names
    are torchvision's ImageNet categories (same sorted-wnid order, shipped in its code,
    no download); the two names ImageNet repeats get a suffix so names stay unique."""
    if len(folders) != 1000 or not all(_WNID.fullmatch(f) for f in folders):
        return folders
    from torchvision.models import ResNet18_Weights

    names: list[str] = []
    for name in ResNet18_Weights.IMAGENET1K_V1.meta["categories"]:
        names.append(name if name not in names else f"{name} ({names.count(name) + 1})")
    return names
