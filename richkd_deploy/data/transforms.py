"""Per-sample transforms: the paper's CIFAR augmentation and the evaluation path.

Input: one RGB image as a uint8 HWC numpy array (what the datasets pass), a PIL
image, or a uint8 CHW tensor. Output: a normalised float32 CHW tensor.

Speed matters on 2 CPU cores, so crop and flip are numpy slice copies of the uint8
array (no PIL round trip), normalisation is one multiply and one add into a
preallocated float32 array, and the in-memory datasets call `apply_batch` with a
whole batch, which crops all images in one numpy indexing operation (about 8x the
per-image path, 50x a torchvision PIL pipeline). Randomness comes from torch's
global RNG, which `make_loader` seeds per batch, so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from richkd_deploy.data.class_names import canonical_name

MeanStd = tuple[tuple[float, float, float], tuple[float, float, float]]

# Computed on the training split (torchvision's CIFAR statistics, as in CRD/RichKD).
_MEAN_STD: dict[str, MeanStd] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # Fashion-MNIST's often-quoted 0.2860/0.3530 are for the 28x28 images. The model sees
    # them zero-padded to 32x32 (784 of 1024 pixels are image), which lowers the mean and
    # the std; these are computed on the 60000 padded training images (mean 0.218999...,
    # std 0.331811...; tests/data/test_data_idx.py re-checks them on the installed files).
    "fashion-mnist": ((0.2190,) * 3, (0.3318,) * 3),  # type: ignore[dict-item]
    "synthetic": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # Your own photos: ImageNet statistics are the usual starting point.
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def default_mean_std(name: str) -> MeanStd:
    """Normalisation (mean, std) per channel for a dataset name; imagefolder gets
    ImageNet's (set data.mean/data.std for other data)."""
    return _MEAN_STD[canonical_name(name)]


def _three(values: float | Sequence[float], what: str) -> tuple[float, float, float]:
    vals = (float(values),) if isinstance(values, int | float) else tuple(float(v) for v in values)
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(f"{what}: expected 1 or 3 values, got {len(vals)}")
    return vals  # type: ignore[return-value]


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def to_uint8_hwc(image: Any) -> np.ndarray:
    """A uint8 [H,W,3] numpy array of `image` (HWC array, PIL image or CHW tensor);
    no copy for an RGB uint8 array."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image tensor, got {image.dtype}")
        image = (image if image.ndim == 3 else image.unsqueeze(0)).permute(1, 2, 0).cpu().numpy()
    elif not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, PIL image or tensor, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise TypeError(f"expected an RGB or grey image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def to_uint8_chw(image: Any) -> torch.Tensor:
    """A uint8 [3,H,W] tensor of `image` (HWC array, PIL image or CHW tensor)."""
    hwc = to_uint8_hwc(image)
    if not hwc.flags.writeable:
        hwc = hwc.copy()  # torch.from_numpy warns on read-only memory
    return torch.from_numpy(hwc).permute(2, 0, 1)


def resize_uint8(image: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a uint8 [C,H,W] or [N,C,H,W] tensor to exactly
    `size` (aspect ratio not kept: small-image classifiers take square inputs). Same
    filter as torchvision's resize(antialias=True), without importing transforms.v2."""
    h, w = _size2(size)
    if tuple(image.shape[-2:]) == (h, w):
        return image
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    out = torch.nn.functional.interpolate(batch.float(), size=(h, w), mode="bilinear", antialias=True,
                                          align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if image.ndim == 4 else out[0]


def _resize_hwc(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == size:
        return image
    return resize_uint8(to_uint8_chw(image), size).permute(1, 2, 0).numpy()


def crop_resize(image: np.ndarray, top: int, left: int, height: int, width: int,
                size: tuple[int, int]) -> np.ndarray:
    """The window (top, left, height, width) of a uint8 HWC image resized to `size` in one
    PIL bilinear pass (area-filtered when shrinking, like torchvision's PIL path): 2-3x
    faster than a torch resize for photo-sized inputs, and no intermediate crop copy."""
    if (height, width) == size and image.shape[:2] == size:
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    out = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=(left, top, left + width, top + height))
    return np.array(out)  # writable: torch.from_numpy warns on read-only memory


class Normalize:
    """uint8 -> (x/255 - mean)/std as float32, one multiply and one add. Takes HWC
    numpy ([H,W,3] or [N,H,W,3]) and returns a contiguous CHW / NCHW tensor; `tensor`
    does the same for uint8 CHW / NCHW tensors on any device."""

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = _three(mean, "mean")
        self.std = _three(std, "std")
        if any(s <= 0 for s in self.std):
            raise ValueError("std: every value must be positive")
        s = np.asarray(self.std, dtype=np.float64)
        m = np.asarray(self.mean, dtype=np.float64)
        self._scale = (1.0 / (255.0 * s)).astype(np.float32).reshape(3, 1, 1)
        self._shift = (-m / s).astype(np.float32).reshape(3, 1, 1)

    def __call__(self, hwc: np.ndarray) -> torch.Tensor:
        chw = np.moveaxis(hwc, -1, -3)
        out = np.empty(chw.shape, dtype=np.float32)
        np.multiply(chw, self._scale, out=out)
        out += self._shift
        return torch.from_numpy(out)

    def tensor(self, images: torch.Tensor) -> torch.Tensor:
        scale = torch.from_numpy(self._scale).to(images.device)
        shift = torch.from_numpy(self._shift).to(images.device)
        return torch.addcmul(shift, images.to(torch.float32, memory_format=torch.contiguous_format), scale)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def normalize_batch(images: torch.Tensor, mean: float | Sequence[float], std: float | Sequence[float]) -> torch.Tensor:
    """A uint8 [n,3,H,W] batch (e.g. `uint8_batch` after corruption) normalised like
    `eval_transform`, on the batch's device."""
    return Normalize(mean, std).tensor(images)


class TrainTransform:
    """Random crop with zero padding + random horizontal flip + normalise: the CIFAR
    augmentation of CRD/RichKD (torchvision's RandomCrop(size, padding) and
    RandomHorizontalFlip: crop offsets uniform in 0..2*padding, flip with p=0.5).
    Images of another size are resized to `input_size` first.

    `__call__` transforms one image; `apply_batch` a uint8 [N,H,W,3] array at once
    (the in-memory datasets use it inside a DataLoader: several times faster).
    """

    def __init__(self, input_size: int | Sequence[int], mean: float | Sequence[float], std: float | Sequence[float],
                 crop_padding: int = 4, hflip: bool = True) -> None:
        self.size = _size2(input_size)
        self.padding = int(crop_padding)
        if self.padding < 0:
            raise ValueError("crop_padding must be >= 0")
        self.hflip = bool(hflip)
        self.normalize = Normalize(mean, std)

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top, left, flip) per image, from torch's global RNG (seeded per batch)."""
        span = 2 * self.padding + 1
        r = torch.randint(0, span * span * (2 if self.hflip else 1), (n,)).numpy()
        flip = (r % 2 == 1) if self.hflip else np.zeros(n, dtype=bool)
        if self.hflip:
            r = r // 2
        return r // span, r % span, flip

    def _crop_into(self, out: np.ndarray, src: np.ndarray, top: int, left: int) -> None:
        """Copy the window (top, left) of src zero-padded by `padding` into zeroed `out`."""
        h, w = self.size
        p = self.padding
        r0, r1 = max(0, p - top), min(h, p + h - top)
        c0, c1 = max(0, p - left), min(w, p + w - left)
        if r1 > r0 and c1 > c0:
            out[r0:r1, c0:c1] = src[r0 + top - p:r1 + top - p, c0 + left - p:c1 + left - p]

    def __call__(self, image: Any) -> torch.Tensor:
        src = _resize_hwc(to_uint8_hwc(image), self.size)
        top, left, flip = self._draw(1)
        out = np.zeros((*self.size, 3), dtype=np.uint8)
        self._crop_into(out, src, int(top[0]), int(left[0]))
        if flip[0]:
            out = out[:, ::-1]
        return self.normalize(out)

    def apply_batch(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N,H,W,3] -> normalised float32 [N,3,h,w], each image augmented
        independently: one padded copy, then every crop gathered through a sliding
        window view in one indexing operation (no Python loop over images)."""
        n = images.shape[0]
        if images.shape[1:3] != self.size:
            images = np.stack([_resize_hwc(im, self.size) for im in images]) if n else images
        h, w = self.size
        p = self.padding
        top, left, flip = self._draw(n)
        padded = np.zeros((n, 3, h + 2 * p, w + 2 * p), dtype=np.uint8)
        padded[:, :, p:p + h, p:p + w] = images.transpose(0, 3, 1, 2)
        windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # [n,3,2p+1,2p+1,h,w], a view
        out = windows[np.arange(n), :, top, left]  # [n,3,h,w], a copy
        if flip.any():
            out[flip] = out[flip][..., ::-1]
        return self.normalize(out.transpose(0, 2, 3, 1))

    @property
    def deterministic(self) -> bool:
        """No crop offset and no flip to draw: an image always becomes the same tensor,
        so a frozen teacher's outputs on it can be computed once (teacher.targets)."""
        return self.padding == 0 and not self.hflip

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, crop_padding={self.padding}, hflip={self.hflip}, {self.normalize!r})"


class EvalTransform:
    """Resize + normalise; deterministic.

    `crop_ratio=None` squashes the whole image to `input_size` (the small-image path:
    CIFAR-sized inputs already are the object). A ratio such as 0.875 is the ImageNet
    evaluation: resize the shorter side to `input_size / ratio`, keep the centre
    `input_size` square. It is computed as crop-then-resize (the central square of
    side `ratio * shorter side`, then one resize), which selects the same region as
    torchvision's Resize + CenterCrop with one resampling instead of two.
    """

    def __init__(self, input_size: int | Sequence[int], mean: float | Sequence[float],
                 std: float | Sequence[float], crop_ratio: float | None = None) -> None:
        self.size = _size2(input_size)
        if crop_ratio is not None and not 0 < crop_ratio <= 1:
            raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
        self.crop_ratio = crop_ratio
        self.normalize = Normalize(mean, std)

    def prepare_uint8(self, image: np.ndarray) -> np.ndarray:
        """The geometric part (centre crop, resize) on a uint8 HWC image, without
        normalising: validate corrupts exactly what the model sees."""
        if self.crop_ratio is not None:
            h, w = image.shape[:2]
            side = max(1, round(min(h, w) * self.crop_ratio))
            return crop_resize(image, (h - side) // 2, (w - side) // 2, side, side, self.size)
        return _resize_hwc(image, self.size)

    def __call__(self, image: Any) -> torch.Tensor:
        return self.normalize(self.prepare_uint8(to_uint8_hwc(image)))

    def apply_batch(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N,H,W,3] -> normalised float32 [N,3,h,w]."""
        if (images.shape[1:3] != self.size or self.crop_ratio is not None) and images.shape[0]:
            images = np.stack([self.prepare_uint8(im) for im in images])
        return self.normalize(images)

    #: Nothing is drawn: the same image always gives the same tensor.
    deterministic = True

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, crop_ratio={self.crop_ratio}, {self.normalize!r})"


class RandomResizedCropTransform:
    """The ImageNet training augmentation: a random crop of random area (`scale` of
    the image) and aspect ratio (`ratio`), resized to `input_size`, a random
    horizontal flip, normalise -- torchvision's RandomResizedCrop algorithm (ten
    tries, then the central crop of the closest allowed ratio), drawing from torch's
    global RNG so `make_loader` seeds it per batch. Works on the decoded uint8 array
    (one crop slice, one antialiased resize)."""

    def __init__(self, input_size: int | Sequence[int], mean: float | Sequence[float], std: float | Sequence[float],
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: bool = True) -> None:
        self.size = _size2(input_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.hflip = bool(hflip)
        self.normalize = Normalize(mean, std)

    #: A crop is drawn for every image, every time.
    deterministic = False

    def box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop, as torchvision's get_params."""
        area = h * w
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = float(torch.exp(torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]))).item())
            cw = round((target * aspect) ** 0.5)
            ch = round((target / aspect) ** 0.5)
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,)).item())
                left = int(torch.randint(0, w - cw + 1, (1,)).item())
                return top, left, ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, round(w / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            ch, cw = h, round(h * self.ratio[1])
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, image: Any) -> torch.Tensor:
        src = to_uint8_hwc(image)
        top, left, ch, cw = self.box(*src.shape[:2])
        out = crop_resize(src, top, left, ch, cw, self.size)
        if self.hflip and torch.rand(1).item() < 0.5:
            out = out[:, ::-1]
        return self.normalize(np.ascontiguousarray(out))

    def apply_batch(self, images: np.ndarray) -> torch.Tensor:
        return torch.stack([self(im) for im in images]) if images.shape[0] else \
            torch.empty((0, 3, *self.size), dtype=torch.float32)

    def __repr__(self) -> str:
        return (f"RandomResizedCropTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip}, {self.normalize!r})")


def train_transform(input_size: int | Sequence[int], mean: float | Sequence[float], std: float | Sequence[float],
                    crop_padding: int = 4, hflip: bool = True, crop: str = "pad",
                    scale: tuple[float, float] = (0.08, 1.0)) -> TrainTransform | RandomResizedCropTransform:
    """The training augmentation: `crop="pad"` is the CIFAR one (random padded crop,
    flip); `crop="random_resized"` the ImageNet one (random resized crop, flip).
    Flipping is also right for Fashion-MNIST (clothes are left-right symmetric)."""
    if crop == "random_resized":
        return RandomResizedCropTransform(input_size, mean, std, scale=scale, hflip=hflip)
    if crop != "pad":
        raise ValueError(f"crop must be 'pad' or 'random_resized', got {crop!r}")
    return TrainTransform(input_size, mean, std, crop_padding, hflip)


def eval_transform(input_size: int | Sequence[int], mean: float | Sequence[float],
                   std: float | Sequence[float], crop_ratio: float | None = None) -> EvalTransform:
    """The evaluation path: resize (after a centre crop of `crop_ratio`, if given), normalise."""
    return EvalTransform(input_size, mean, std, crop_ratio)
