"""CIFAR without a network: clear errors naming the folder, and the conversion of
torchvision's arrays (tiny fake batch files, integrity check bypassed)."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from richkd_deploy.data import CIFAR10_CLASSES, CIFAR100_CLASSES, build_dataset
from richkd_deploy.errors import DataError


@pytest.mark.parametrize(("name", "folder"), [("cifar100", "cifar-100-python"), ("cifar10", "cifar-10-batches-py")])
def test_offline_names_the_folder(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataError) as err:
        build_dataset(name, "train", root=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path.resolve()) in msg and folder in msg and "data.root" in msg
    assert "\n" not in msg


def test_failed_download_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="downloading it failed.*name resolution.*cifar-100-python.tar.gz"):
        build_dataset("cifar100", "test", root=tmp_path, download=True)


def _fake_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        data[:, 0] = i  # red channel of pixel (0,0) tags the batch file
        entry = {"data": data, "labels": [(i + k) % 10 for k in range(4)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))


def test_conversion_of_torchvision_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)  # fake files, no md5s
    _fake_cifar10(tmp_path)
    train = build_dataset("cifar10", "train", root=tmp_path, download=False)
    assert train.images.shape == (20, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.images[:, 0, 0, 0].tolist() == [i for i in range(5) for _ in range(4)]
    assert train.labels.dtype == np.int64 and train.labels[:4].tolist() == [0, 1, 2, 3]
    assert train.classes == list(CIFAR10_CLASSES) and train.name == "cifar10"
    test = build_dataset("cifar10", "test", root=tmp_path, download=False, limit=2, seed=0)
    assert len(test) == 2 and (test.images[:, 0, 0, 0] == 5).all()
    assert len(CIFAR100_CLASSES) == 100
