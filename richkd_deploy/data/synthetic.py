"""Generated 32x32 RGB images with 10 learnable classes.

For tests and the smoke recipe when no real dataset is installed: a small CNN must be
able to learn it in an epoch or two, but not from one pixel, so distillation and
calibration have something to do. Class k is defined by three cues, each blurred by
noise: a colour hue (k/10, jittered so neighbours overlap), a stripe orientation
(horizontal for even k, vertical for odd k, both unchanged by horizontal flips) and
a stripe frequency (k // 2), shown inside a soft blob at a random position over a
random dark background, plus pixel noise.

The class definitions are fixed; `seed` and the split only change the random draws,
so train and test come from the same distribution for any seed.
"""

from __future__ import annotations

import numpy as np

from richkd_deploy.data.class_names import SYNTHETIC_CLASSES, SYNTHETIC_NUM_CLASSES
from richkd_deploy.data.datasets import ImageArrayDataset

DEFAULT_SIZES = {"train": 2000, "test": 500}
SIZE = 32
_SPLIT_CODE = {"train": 0, "test": 1}


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, inputs [n] in [0,1], output [n,3]."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ])  # [6, n, 3]
    return table[i, np.arange(h.shape[0])]


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """n labels, every class n//num_classes or one more times, shuffled."""
    return rng.permutation(np.arange(n, dtype=np.int64) % num_classes)


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n,32,32,3] images for `labels` (see the module docstring)."""
    n = labels.shape[0]
    f32 = np.float32
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(f32)
    hue = (labels / SYNTHETIC_NUM_CLASSES + rng.normal(0.0, 0.035, n)) % 1.0
    fg = _hsv_to_rgb(hue, rng.uniform(0.55, 0.95, n), rng.uniform(0.65, 1.0, n)).astype(f32)
    bg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.0, 0.4, n), rng.uniform(0.05, 0.4, n)).astype(f32)
    coord = np.where((labels % 2 == 0)[:, None, None], yy[None], xx[None])  # [n,32,32]
    freq = (1.5 + 1.0 * (labels // 2) + rng.normal(0, 0.15, n)).astype(f32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n).astype(f32)[:, None, None]
    stripes = 0.5 + 0.5 * np.sin(f32(2 * np.pi / SIZE) * freq * coord + phase)
    cy, cx, radius = (rng.uniform(lo, hi, n).astype(f32)[:, None, None] for lo, hi in ((8, 24), (8, 24), (9, 15)))
    dist = np.sqrt((yy[None] - cy) ** 2 + (xx[None] - cx) ** 2)
    blob = np.clip((radius - dist) / f32(3.0), 0.0, 1.0)
    mask = (stripes * blob)[..., None]  # [n,32,32,1]
    image = bg[:, None, None, :] + (fg - bg)[:, None, None, :] * mask
    image += rng.standard_normal(image.shape, dtype=f32) * f32(0.06)
    return (np.clip(image, 0.0, 1.0) * f32(255.0) + f32(0.5)).astype(np.uint8)


def make_synthetic(split: str, n: int | None = None, seed: int = 0) -> ImageArrayDataset:
    """`n` class-balanced samples (default 2000 train / 500 test), deterministic in
    (split, n, seed)."""
    n = DEFAULT_SIZES[split] if n is None else int(n)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) % 2**64, _SPLIT_CODE[split], 0x5EED]))
    labels = balanced_labels(n, SYNTHETIC_NUM_CLASSES, rng)
    return ImageArrayDataset(synthetic_images(labels, rng), labels, SYNTHETIC_CLASSES, name="synthetic")
