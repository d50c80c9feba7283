"""Transforms: shapes, dtypes, normalisation, and that every augmented image is one of
the crop/flip variants torchvision's RandomCrop + RandomHorizontalFlip could give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from richkd_deploy.data import (
    build_dataset,
    default_mean_std,
    eval_transform,
    normalize_batch,
    train_transform,
)


def _variants(image: np.ndarray, p: int) -> np.ndarray:
    """All (2p+1)^2 crops of the zero-padded image, and their mirror images: [k,H,W,3]."""
    h, w, _ = image.shape
    padded = np.pad(image, ((p, p), (p, p), (0, 0)))
    crops = [padded[t:t + h, s:s + w] for t in range(2 * p + 1) for s in range(2 * p + 1)]
    return np.stack(crops + [c[:, ::-1] for c in crops])


def _unnormalise(x: torch.Tensor, mean, std) -> np.ndarray:
    m, s = torch.tensor(mean).view(-1, 3, 1, 1), torch.tensor(std).view(-1, 3, 1, 1)
    out = (x.reshape(-1, *x.shape[-3:]) * s + m) * 255.0
    return np.rint(out.numpy()).astype(np.int64).transpose(0, 2, 3, 1)


def test_default_mean_std() -> None:
    assert default_mean_std("cifar100") == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    assert default_mean_std("CIFAR-10")[0] == (0.4914, 0.4822, 0.4465)
    mean, std = default_mean_std("fashion-mnist")
    assert mean[0] == mean[1] == mean[2] and 0.21 < mean[0] < 0.23 and 0.32 < std[0] < 0.34
    assert default_mean_std("synthetic") == ((0.5,) * 3, (0.5,) * 3)


def test_eval_transform_values() -> None:
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    t = eval_transform(8, mean, std)
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 0, 51
    out = t(img)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.allclose(out[0], torch.tensor(1.0)) and torch.allclose(out[1], torch.tensor(-1.0))
    assert torch.allclose(out[2], torch.tensor(0.2))
    assert torch.equal(t(Image.fromarray(img)), out)  # PIL input
    assert torch.equal(t(torch.from_numpy(img).permute(2, 0, 1)), out)  # CHW tensor input
    assert torch.equal(t.apply_batch(np.stack([img, img])), torch.stack([out, out]))
    assert torch.allclose(normalize_batch(torch.from_numpy(img).permute(2, 0, 1)[None], mean, std), out[None])
    grey = eval_transform(8, 0.5, 0.5)(np.full((8, 8), 255, dtype=np.uint8))
    assert grey.shape == (3, 8, 8) and torch.allclose(grey, torch.tensor(1.0))


def test_eval_transform_resizes_when_sizes_differ() -> None:
    img = np.full((20, 30, 3), 200, dtype=np.uint8)
    out = eval_transform(16, 0.0, 1.0)(img)
    assert out.shape == (3, 16, 16) and torch.allclose(out, torch.tensor(200 / 255), atol=1e-6)
    out = train_transform(16, 0.0, 1.0, crop_padding=0, hflip=False)(img)
    assert out.shape == (3, 16, 16)


@pytest.mark.parametrize("hflip", [True, False])
def test_train_augmentation_is_a_padded_crop_and_flip(hflip: bool) -> None:
    ds = build_dataset("synthetic", "test", limit=20)
    mean, std = default_mean_std("synthetic")
    t = train_transform(32, mean, std, crop_padding=4, hflip=hflip)
    torch.manual_seed(0)
    single = _unnormalise(torch.stack([t(ds.images[i]) for i in range(20)]), mean, std)
    batch = _unnormalise(t.apply_batch(ds.images), mean, std)
    seen = set()
    for out in (single, batch):
        for i in range(20):
            variants = _variants(ds.images[i], 4)
            if not hflip:
                variants = variants[:81]
            hits = np.nonzero((variants == out[i]).all(axis=(1, 2, 3)))[0]
            assert hits.size >= 1, f"image {i} is not a crop/flip of the source"
            seen.add(int(hits[0]))
    assert len(seen) > 5  # offsets really vary
    assert t.apply_batch(ds.images[:0]).shape == (0, 3, 32, 32)


def test_flip_draws_both_ways_and_output_is_contiguous() -> None:
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[:, :16] = 255  # left half white
    t = train_transform(32, 0.0, 1.0, crop_padding=0, hflip=True)
    torch.manual_seed(1)
    outs = t.apply_batch(np.stack([img] * 64))
    assert outs.is_contiguous() and outs.dtype == torch.float32
    left_white = outs[:, 0, 0, 0] > 0.5
    assert 10 < int(left_white.sum()) < 54
    assert torch.equal(outs[~left_white][:, :, :, :16], torch.zeros_like(outs[~left_white][:, :, :, :16]))
