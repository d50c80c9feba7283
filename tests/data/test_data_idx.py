"""IDX parsing and the Fashion-MNIST loader (tiny generated files, plus the real
files when the Debian package is installed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from richkd_deploy.data import build_dataset, default_mean_std, read_idx, write_idx
from richkd_deploy.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from richkd_deploy.errors import DataError


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    images = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
    path = write_idx(tmp_path / ("x.gz" if compress else "x"), images)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") is compress
    back = read_idx(path, expect_ndim=3)
    assert back.dtype == np.uint8 and back.shape == (5, 28, 28)
    np.testing.assert_array_equal(back, images)
    ints = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "i", ints)), ints)


def test_idx_header_bytes(tmp_path: Path) -> None:
    write_idx(tmp_path / "l", np.array([3, 1, 4], dtype=np.uint8))
    assert (tmp_path / "l").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_idx_raises(tmp_path: Path, compress: bool) -> None:
    raw = write_idx(tmp_path / "full", np.zeros((4, 28, 28), dtype=np.uint8), compress=False).read_bytes()
    cut = raw[:-100]
    path = tmp_path / "cut"
    path.write_bytes(gzip.compress(cut) if compress else cut)
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(path, fix="download it again")
    assert "download it again" in str(err.value) and str(path) in str(err.value)


def test_bad_magic_and_broken_gzip(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    good = gzip.compress(write_idx(tmp_path / "g", np.zeros((2, 3), dtype=np.uint8)).read_bytes())
    (tmp_path / "broken.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="gzip"):
        read_idx(tmp_path / "broken.gz")
    write_idx(tmp_path / "two_d", np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="3 dimensions"):
        read_idx(tmp_path / "two_d", expect_ndim=3)


def _fake_fashion(root: Path, n: int, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # no zeros: the border test is exact
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(root / f"train-images-idx3-ubyte{suffix}", images)
    write_idx(root / f"train-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_root(tmp_path: Path, compress: bool) -> None:
    images, labels = _fake_fashion(tmp_path, 30, compress)
    ds = build_dataset("fashion-mnist", "train", root=tmp_path)
    assert ds.images.shape == (30, 32, 32, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[:, 2:30, 2:30, 1], images)
    assert not ds.images[:, :2].any() and not ds.images[:, 30:].any()
    assert not ds.images[:, :, :2].any() and not ds.images[:, :, 30:].any()
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.labels.dtype == np.int64 and ds.classes[0] == "T-shirt/top"


def test_fashion_mnist_missing_and_mismatched(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        build_dataset("fashion-mnist", "test", root=tmp_path)
    assert "t10k-images-idx3-ubyte" in str(err.value) and "data.root" in str(err.value)
    _fake_fashion(tmp_path, 20, False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match="20 images but"):
        load_fashion_mnist("train", tmp_path)


def test_fashion_mnist_truncated_file(tmp_path: Path) -> None:
    _fake_fashion(tmp_path, 20, False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated.*apt-get install dataset-fashion-mnist"):
        build_dataset("fashion-mnist", "train", root=tmp_path)


@pytest.mark.skipif(not (DEFAULT_ROOT / "train-labels-idx1-ubyte.gz").exists()
                    and not (DEFAULT_ROOT / "train-labels-idx1-ubyte").exists(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist() -> None:
    train = build_dataset("fashion-mnist", "train")
    assert train.images.shape == (60000, 32, 32, 3) and train.num_classes == 10
    border = np.ones((32, 32), dtype=bool)
    border[2:30, 2:30] = False
    assert not train.images[:, border].any()
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert (train.class_counts() == 6000).all()
    hist = np.bincount(train.images[:, :, :, 0].ravel(), minlength=256)  # exact statistics, little memory
    values = np.arange(256) / 255.0
    x_mean = (hist * values).sum() / hist.sum()
    x_std = np.sqrt((hist * (values - x_mean) ** 2).sum() / hist.sum())
    (mean, _, _), (std, _, _) = default_mean_std("fashion-mnist")
    assert abs(x_mean - mean) < 5e-4 and abs(x_std - std) < 5e-4
    test = build_dataset("fashion-mnist", "test", limit=500, seed=3)
    assert len(test) == 500 and (test.class_counts() == 50).all()
