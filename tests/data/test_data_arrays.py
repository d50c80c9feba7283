"""The in-memory dataset type."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from richkd_deploy.data import ImageArrayDataset, eval_transform
from richkd_deploy.errors import DataError


def _ds() -> ImageArrayDataset:
    images = np.arange(6 * 4 * 4 * 3, dtype=np.int64).reshape(6, 4, 4, 3).astype(np.uint8)
    return ImageArrayDataset(images, np.array([0, 1, 2, 0, 1, 2]), ["a", "b", "c"], name="toy")


def test_getitem_raw_and_uint8_batch() -> None:
    ds = _ds()
    image, label, index = ds[4]
    assert image.shape == (3, 4, 4) and image.dtype == torch.float32 and (label, index) == (1, 4)
    assert torch.allclose(image * 255, torch.from_numpy(ds.images[4].transpose(2, 0, 1)).float())
    assert ds[-1][2] == 5 and ds.num_classes == 3 and len(ds) == 6
    with pytest.raises(IndexError):
        ds[6]
    raw = ds.raw(2)
    assert raw.mode == "RGB" and np.array_equal(np.asarray(raw), ds.images[2])
    batch = ds.uint8_batch(torch.tensor([3, 1]))
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 4, 4)
    assert torch.equal(batch[1], torch.from_numpy(ds.images[1]).permute(2, 0, 1))
    assert ds.uint8_batch([0], size=8).shape == (1, 3, 8, 8)


def test_with_transform_shares_and_subset_copies() -> None:
    ds = _ds()
    view = ds.with_transform(eval_transform(4, 0.5, 0.5))
    assert view.images is ds.images and ds.transform is None and view.transform is not None
    assert view.__getitems__([0, 1])[1][0].shape == (3, 4, 4)
    sub = view.subset([5, 0])
    assert not np.shares_memory(sub.images, ds.images)
    assert sub.labels.tolist() == [2, 0] and sub[0][2] == 0 and sub.transform is view.transform
    assert np.array_equal(sub.images[0], ds.images[5])
    assert sub.fingerprint() != ds.fingerprint() and ds.fingerprint() == _ds().fingerprint()


def test_grey_input_and_validation() -> None:
    grey = ImageArrayDataset(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]), ["a", "b"])
    assert grey.images.shape == (2, 4, 4, 3)
    with pytest.raises(DataError, match="uint8"):
        ImageArrayDataset(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1]), ["a", "b"])
    with pytest.raises(DataError, match="labels"):
        ImageArrayDataset(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 2]), ["a", "b"])
    with pytest.raises(DataError, match="2 images but 3 labels"):
        ImageArrayDataset(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1, 1]), ["a", "b"])
