"""CIFAR-10/100 through torchvision, converted to an in-memory ImageArrayDataset.

torchvision downloads without a timeout and, offline, fails with a bare URLError or
"Dataset not found or corrupted". Here the download gets a 10 s socket timeout and
every failure becomes a DataError that names the folder to put the files into.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from richkd_deploy.data.class_names import CIFAR10_CLASSES, CIFAR100_CLASSES
from richkd_deploy.data.datasets import ImageArrayDataset
from richkd_deploy.errors import DataError
from richkd_deploy.user_cache import data_dir

DOWNLOAD_TIMEOUT_S = 10.0

_SPECS = {
    # name: (torchvision class name, folder inside root, archive, classes)
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz", CIFAR10_CLASSES),
    "cifar100": ("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz", CIFAR100_CLASSES),
}


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision's urlopen has no timeout; the process default bounds a stalled download."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _instructions(root: Path, folder: str, archive: str) -> str:
    return (f"download {archive} from the CIFAR website and extract it into {root} "
            f"(so that {root / folder} exists), or set data.root to the folder holding {folder}/")


def load_cifar(name: str, split: str, root: str | Path | None = None, download: bool = True) -> ImageArrayDataset:
    """CIFAR-10 or CIFAR-100 `split` ("train" 50000 / "test" 10000) as uint8 NHWC."""
    cls_name, folder, archive, classes = _SPECS[name]
    root = Path(root if root is not None else data_dir() / "cifar").expanduser().resolve()
    if not download and not (root / folder).is_dir():  # say so without importing torchvision (slow)
        raise DataError(f"{name} is not in {root} and download is off; {_instructions(root, folder, archive)}")
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    train = split == "train"
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError:  # absent or corrupted
        if not download:
            raise DataError(f"{name} is missing or incomplete in {root} and download is off; {_instructions(root, folder, archive)}") from None
        try:
            root.mkdir(parents=True, exist_ok=True)
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                ds = cls(str(root), train=train, download=True)
        except Exception as e:  # URLError, timeouts, HTTP errors, bad archives, md5 mismatch...
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            raise DataError(f"{name} is not in {root} and downloading it failed ({reason}); "
                            f"{_instructions(root, folder, archive)}") from e
    images = np.ascontiguousarray(ds.data, dtype=np.uint8)
    labels = np.asarray(ds.targets, dtype=np.int64)
    if list(ds.classes) != list(classes):
        raise DataError(f"{root / folder}: its class list does not match {name}'s; "
                        f"delete the folder and {_instructions(root, folder, archive)}")
    return ImageArrayDataset(images, labels, classes, name=name)
