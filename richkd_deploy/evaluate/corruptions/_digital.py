"""Digital corruptions: brightness, contrast, saturate, elastic transform,
pixelate and JPEG compression.

Brightness and saturate are HSV edits in the reference (skimage rgb2hsv ->
edit -> hsv2rgb). Both keep the hue, so they reduce to closed forms on RGB
(derived in their docstrings) with no colour-space round trip.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from io import BytesIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ._common import Separable, gaussian_matrix, random_uniform, to_uint8

BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
SATURATE = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2))
ELASTIC_ALPHA = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
JPEG_QUALITY = (25, 18, 15, 10, 7)
PILLOW_MIN_PIXELS = 96 * 96  # from here on Pillow per image (threaded) beats batched torch for pixelate and JPEG


def brightness(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Raise HSV value by c (clipped at 1), keeping hue and saturation.

    With V = max(r, g, b) and V' = min(V + c, 1), HSV->RGB with unchanged H, S
    gives rgb * V'/V; a black pixel (V = 0, S = H = 0) becomes grey V'. Each
    output byte depends only on (V, channel byte): a 64 KB table.
    """
    v = images.amax(dim=1, keepdim=True)
    idx = torch.add(images.to(torch.int32), v, alpha=256)  # V * 256 + channel
    return _brightness_table(severity, images.device).index_select(0, idx.view(-1)).view_as(images)


@lru_cache(maxsize=16)
def _brightness_table(severity: int, device: torch.device) -> torch.Tensor:
    v = torch.arange(256, dtype=torch.float64)[:, None] / 255.0
    x = torch.arange(256, dtype=torch.float64)[None, :] / 255.0
    v_new = torch.clamp(v + BRIGHTNESS[severity - 1], max=1.0)
    out = torch.where(v > 0, x * (v_new / torch.where(v > 0, v, 1.0)), v_new)
    out = torch.where(x <= v, out, 0.0)  # unreachable pairs (channel above the maximum)
    return (out.clamp(0.0, 1.0) * 255.0).to(torch.uint8).view(-1).to(device)


def contrast(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Pull every channel towards its own image mean: (x - m) * c + m (stays in 0..255)."""
    c = CONTRAST[severity - 1]
    means = images.mean(dim=(2, 3), keepdim=True, dtype=torch.float32)
    return to_uint8(torch.addcmul(means * (1.0 - c), images, means.new_tensor(c)), clamp=False)


def saturate(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Scale HSV saturation: S' = clip(S * a + b, 0, 1), keeping hue and value.

    With V = max, delta = max - min, HSV->RGB gives ch' = V - (V - ch) * S' V / delta.
    A grey pixel has hue 0 (red), so there S' = clip(b) tints it: (V, V(1-S'), V(1-S')).
    """
    a, b = SATURATE[severity - 1]
    x = images.to(torch.float32)
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    grey = delta == 0
    s = torch.where(v > 0, delta / torch.where(v > 0, v, 1.0), 0.0)
    s_new = torch.clamp(s * a + b, 0.0, 1.0)
    gain = torch.where(grey, 0.0, s_new * v / torch.where(grey, 1.0, delta))
    out = v - (v - x) * gain
    if b > 0:
        tint = torch.where(grey, v * min(max(b, 0.0), 1.0), 0.0)
        out[:, 1:] -= tint
    return to_uint8(out)


# ------------------------------------------------------------------- elastic


@lru_cache(maxsize=16)
def _elastic_smoother(h: int, w: int) -> Separable:
    """skimage ``gaussian(.., sigma=0.01*shape, mode='reflect', truncate=3)``."""
    return Separable([gaussian_matrix(0.01 * h, h, "reflect", 3.0)], [gaussian_matrix(0.01 * w, w, "reflect", 3.0)])


def elastic_transform(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Resample along a smoothed random displacement field (bilinear, reflected borders).

    As in the reference: displacements are uniform in +-0.005*H per pixel,
    Gaussian-smoothed with sigma 0.01*size and scaled by alpha; sampling is
    ``map_coordinates(order=1, mode='reflect')``, which is `grid_sample` with
    reflection padding and align_corners=False.
    """
    n, _, h, w = images.shape
    alpha = ELASTIC_ALPHA[severity - 1]
    max_d = h * 0.005
    field = random_uniform(gen, n * 2 * h * w, images.device).view(n, 2, h, w)
    field = _elastic_smoother(h, w).apply(field.mul_(2.0 * max_d).sub_(max_d)).mul_(alpha)
    ys = torch.arange(h, device=images.device, dtype=torch.float32)[:, None]
    xs = torch.arange(w, device=images.device, dtype=torch.float32)[None, :]
    # field[:, 0] is dx (added to columns), field[:, 1] is dy (added to rows)
    gx = (field[:, 0] + xs).mul_(2.0 / w).add_(1.0 / w - 1.0)
    gy = (field[:, 1] + ys).mul_(2.0 / h).add_(1.0 / h - 1.0)
    grid = torch.stack((gx, gy), dim=-1)
    out = F.grid_sample(images.to(torch.float32), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return to_uint8(out, clamp=False)


# ------------------------------------------------------------------ pixelate


def _box_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's BOX resampling weights for one axis ([out, in])."""
    scale = in_size / out_size
    support = 0.5 * max(scale, 1.0)
    ss = 1.0 / max(scale, 1.0)
    m = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        for x in range(lo, hi):
            t = (x - center + 0.5) * ss
            if -0.5 < t <= 0.5:
                m[xx, x] = 1.0
        m[xx] /= m[xx].sum()
    return m


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's NEAREST resize source index for each output pixel."""
    return np.minimum(np.floor((np.arange(out_size) + 0.5) * (in_size / out_size)), in_size - 1).astype(np.int64)


@lru_cache(maxsize=32)
def _pixelate_ops(severity: int, h: int, w: int) -> tuple[Separable, Separable]:
    """Pillow's horizontal box pass, then its vertical box pass fused with the
    nearest up-sampling (a selection, which commutes with the rounding)."""
    c = PIXELATE[severity - 1]
    sh, sw = int(h * c), int(w * c)
    up_rows = np.eye(sh)[_nearest_index(sh, h)]  # [h, sh]
    up_cols = np.eye(sw)[_nearest_index(sw, w)]  # [w, sw]
    horizontal = Separable([np.eye(h)], [_box_matrix(w, sw)])
    vertical = Separable([up_rows @ _box_matrix(h, sh)], [up_cols])
    return horizontal, vertical


@lru_cache(maxsize=32)
def _pixelate_direct(severity: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, bool, torch.Tensor, torch.Tensor]:
    """Large images: the two box passes as plain matrices ([w, sw] and [sh, h]) and
    the nearest up-sampling as source indices, applied to the small uint8 image;
    `exact` says whether torch's 'nearest-exact' resize picks Pillow's indices
    (it is several times faster than indexing)."""
    c = PIXELATE[severity - 1]
    sh, sw = int(h * c), int(w * c)
    cols = torch.from_numpy(_box_matrix(w, sw).T.copy()).float()
    rows = torch.from_numpy(_box_matrix(h, sh)).float()
    up_rows, up_cols = _nearest_index(sh, h), _nearest_index(sw, w)
    exact = _torch_nearest_exact(sh, h) == up_rows.tolist() and _torch_nearest_exact(sw, w) == up_cols.tolist()
    return cols, rows, exact, torch.from_numpy(up_rows), torch.from_numpy(up_cols)


def _torch_nearest_exact(in_size: int, out_size: int) -> list[int]:
    """The source index torch's 'nearest-exact' interpolation picks per output pixel."""
    src = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
    return F.interpolate(src, size=(out_size, 1), mode="nearest-exact").view(-1).long().tolist()


def _pixelate_pillow(image: np.ndarray, factor: float) -> np.ndarray:
    """The reference's two Pillow resizes on one HWC uint8 image."""
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((int(w * factor), int(h * factor)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.NEAREST))


def pixelate(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Box down-sampling then nearest up-sampling, both box passes rounded like Pillow.

    Small images use fused dense operators; mid-sized ones down-sample with two
    GEMMs and up-sample the uint8 result by indexing; from `PILLOW_MIN_PIXELS`
    on (224 px) Pillow's own resizes in a thread pool are faster than any of
    these (its box filter reads each pixel once, in integer arithmetic).
    """
    h, w = images.shape[-2:]
    if h * w >= PILLOW_MIN_PIXELS and images.device.type == "cpu":
        return _pillow_pool(images, partial(_pixelate_pillow, factor=PIXELATE[severity - 1]))
    if h * w <= Separable.DENSE_MAX_PIXELS:
        horizontal, vertical = _pixelate_ops(severity, h, w)
        small = horizontal.apply(images.to(torch.float32)).add_(0.5).floor_()
        return to_uint8(vertical.apply(small).add_(0.5), clamp=False)  # truncation = floor(v + 0.5)
    cols, rows, exact, up_rows, up_cols = _pixelate_direct(severity, h, w)
    dev = images.device
    small = torch.matmul(images.to(torch.float32), cols.to(dev)).add_(0.5).floor_()  # Pillow's horizontal pass first
    small = to_uint8(torch.matmul(rows.to(dev), small).add_(0.5), clamp=False)
    if exact:
        return F.interpolate(small, size=(h, w), mode="nearest-exact")
    return small[:, :, up_rows.to(dev)[:, None], up_cols.to(dev)]


# ---------------------------------------------------------------------- JPEG


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """One HWC uint8 image through Pillow's JPEG encoder and decoder (as the reference)."""
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded)


def _pillow_pool(images: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply a per-image Pillow function (HWC uint8 -> HWC uint8) to a batch in a small
    thread pool: Pillow releases the GIL while it codes and resamples."""
    hwc = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    workers = max(1, min(len(hwc), torch.get_num_threads() + 1))
    if workers == 1:
        out = [fn(im) for im in hwc]
    else:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(fn, hwc))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().to(images.device)


def jpeg_compression(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """A real baseline-JPEG round trip with libjpeg's standard tables at the reference's quality.

    Small images go through torchvision's batched encode/decode (same bytes, a
    tenth of Pillow's per-image overhead), and so do large ones once torchvision.io
    is loaded; otherwise large images go through Pillow (the reference's own call,
    loaded already) in a small thread pool rather than pay torchvision's import,
    seconds on the first call, which validate's single pass over the cells pays.
    """
    quality = JPEG_QUALITY[severity - 1]
    small = images.shape[-2] * images.shape[-1] < PILLOW_MIN_PIXELS
    if small or "torchvision.io" in sys.modules or images.device.type != "cpu":
        from torchvision.io import decode_jpeg, encode_jpeg

        decoded = decode_jpeg(encode_jpeg(list(images.cpu()), quality=quality))
        return torch.stack(decoded).to(images.device)
    return _pillow_pool(images, partial(_jpeg_round_trip, quality=quality))
