"""Batched, seeded torch versions of the Hendrycks & Dietterich corruptions.

The parameters, order and small-image behaviour follow the reference
implementation (PyPI ``imagecorruptions-imaug`` 1.1.5, module
``imagecorruptions``) so that accuracies under our corruptions match
accuracies under the reference's; the implementations are our own and run on
whole uint8 NCHW batches on the images' device.

Differences from the reference, all chosen to batch the work and all
checked for accuracy fidelity with ``benchmarks/corruptions.py --fidelity``:

* randomness comes from a ``torch.Generator`` seeded from (seed, name,
  severity), so results are reproducible per seed (for a given batch) but are
  not the reference's numbers draw for draw; per-pixel noise is sampled by
  inverse CDF on a 2**-12 quantile grid (see ``_noise``), and on the CPU its
  uniform codes are cut out of a cached random pool (see ``_common``);
* float32 instead of float64, so a pixel can truncate one grey level apart;
* spatter's water branch (severities 1-3) approximates OpenCV's Canny edges
  and distance transform.

Exact in batched form: glass blur's sequential pixel scrambling (replayed in
conflict-free parallel steps), motion blur's taps (a shear plus three offset
views, see ``_motion._line_blur``), the plasma fractal of fog, and all the fixed
filters (defocus, zoom, Gaussian, pixelate, JPEG via libjpeg).

Large images (above 32x32, e.g. 224 px at the edge) take other routes to the
same numbers where dense operators stop paying: defocus by FFT, zoom as bilinear
resizes of the centre crops, motion blur's filters in bands, pixelate and JPEG
through Pillow in a thread pool from 96x96 on (see each function;
``benchmarks/corruptions.py --size 224`` times them against the reference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from ._blur import defocus_blur, gaussian_blur, glass_blur, zoom_blur
from ._common import make_generator
from ._digital import brightness, contrast, elastic_transform, jpeg_compression, pixelate, saturate
from ._motion import motion_blur
from ._noise import pixel_noise
from ._weather import fog, frost, frost_source, snow, spatter
from .published import load_published

__all__ = [
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "ALL_CORRUPTIONS",
    "SEVERITIES",
    "corrupt",
    "corrupt_all",
    "get_corruption",
    "frost_source",
    "load_published",
]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MIN_SIZE = 32

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _noise(name: str) -> Corruption:
    def apply(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
        return pixel_noise(images, name, severity, gen)

    apply.__name__ = name
    return apply


_REGISTRY: dict[str, Corruption] = {
    "gaussian_noise": _noise("gaussian_noise"),
    "shot_noise": _noise("shot_noise"),
    "impulse_noise": _noise("impulse_noise"),
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": _noise("speckle_noise"),
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}


def get_corruption(name: str) -> Corruption:
    """The function ``f(images, severity, generator)`` behind `name`.

    Raises ValueError naming the valid corruptions when `name` is unknown.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(ALL_CORRUPTIONS)}") from None


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (0..255), got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}")
    if min(images.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"images must be at least {MIN_SIZE}x{MIN_SIZE} (as the reference), got {tuple(images.shape[-2:])}")


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(severity)


def _to_grey(rgb: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, rounded, as Pillow's convert('L')."""
    weights = rgb.new_tensor([0.299, 0.587, 0.114], dtype=torch.float32)
    grey = torch.einsum("nchw,c->nhw", rgb.to(torch.float32), weights)
    return grey.round_().clamp_(0, 255).to(torch.uint8).unsqueeze(1)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt a uint8 [N, C, H, W] batch (C = 1 or 3, H, W >= 32) on its own device.

    Deterministic for a given batch, name, severity and seed. Single-channel
    images are corrupted as grey RGB (as the reference does) and returned as
    their luma, so the output always has the input's shape and dtype.
    """
    fn = get_corruption(name)
    severity = _check_severity(severity)
    _check_images(images)
    if images.shape[0] == 0:
        return images.clone()
    grey = images.shape[1] == 1
    x = images.expand(-1, 3, -1, -1) if grey else images
    gen = make_generator(images.device, seed, name, severity)
    with torch.no_grad():
        out = fn(x.contiguous(), severity, gen)
    return _to_grey(out) if grey else out


def corrupt_all(
    images: torch.Tensor,
    names: Iterable[str] = CORRUPTIONS,
    severities: Iterable[int] = SEVERITIES,
    seed: int = 0,
) -> Iterator[tuple[str, int, torch.Tensor]]:
    """Yield (name, severity, corrupted batch) for every name x severity, lazily."""
    names = tuple(names)
    severities = tuple(severities)
    for name in names:
        get_corruption(name)
    for name in names:
        for severity in severities:
            yield name, severity, corrupt(images, name, severity, seed)


