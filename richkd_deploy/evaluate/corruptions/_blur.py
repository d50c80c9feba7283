"""Blur corruptions: defocus, glass, motion, zoom and Gaussian blur.

The fixed filters (defocus disk, zoom, Gaussian) are `Separable` operators
built once per (severity, size) from the reference's parameters with its border
rules folded in, so a blur of a whole batch is one or two matrix products.
Glass blur (a sequential random pixel walk) is replayed exactly in batched form;
see `_glass_schedule`. Motion blur (one random angle per image) lives in `_motion`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ._common import (
    CODE_LEVELS,
    Separable,
    correlation_matrix,
    gaussian_matrix,
    linear_zoom_matrix,
    low_rank_terms,
    random_codes,
    to_uint8,
)

DEFOCUS = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))
GLASS = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, max_delta, iterations
GAUSSIAN_BLUR = (1, 2, 3, 4, 6)
# grey levels added before truncating an FFT blur: the reference's flat regions come
# out a hair below their integer value (float32 kernel weights), FFT noise is ~1e-5
FFT_EPS = -1e-4


def _zoom_factors(severity: int) -> np.ndarray:
    """The reference's zoom factors, built with the same `np.arange` calls (float ties matter)."""
    return [
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.02),
        np.arange(1, 1.26, 0.02),
        np.arange(1, 1.31, 0.03),
    ][severity - 1]


def _float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32)


# ------------------------------------------------------------------ Gaussian


@lru_cache(maxsize=64)
def _gaussian_op(sigma: float, h: int, w: int) -> Separable:
    """skimage ``gaussian(.., sigma, channel_axis=-1)``: mode 'nearest', truncate 4."""
    return Separable([gaussian_matrix(sigma, h)], [gaussian_matrix(sigma, w)])


def gaussian_blur(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Isotropic Gaussian blur (extra corruption)."""
    h, w = images.shape[-2:]
    return to_uint8(_gaussian_op(float(GAUSSIAN_BLUR[severity - 1]), h, w).apply(_float(images)), clamp=False)


# ------------------------------------------------------------------- defocus


def _disk_kernel(radius: int, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk (an OpenCV GaussianBlur of a binary disk)."""
    half = 8 if radius <= 8 else radius
    ksize = 3 if radius <= 8 else 5
    coords = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(coords, coords)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-((np.arange(ksize) - (ksize - 1) / 2) ** 2) / (2.0 * alias_blur**2))
    g /= g.sum()
    size = disk.shape[0]
    rows = correlation_matrix(g, size, "mirror")  # OpenCV's default border REFLECT_101
    return rows @ disk @ rows.T


@lru_cache(maxsize=64)
def _defocus_op(severity: int, h: int, w: int) -> Separable:
    radius, alias = DEFOCUS[severity - 1]
    terms = low_rank_terms(_disk_kernel(radius, alias), tol=1e-6)
    rows = [correlation_matrix(u, h, "mirror") for u, _ in terms]
    cols = [correlation_matrix(v, w, "mirror") for _, v in terms]
    return Separable(rows, cols)


FFT_CHUNK_VALUES = 1 << 21  # floats per FFT chunk (8 MB of spectra): cache-sized, twice as fast as one batch


@lru_cache(maxsize=64)
def _defocus_spectrum(severity: int, h: int, w: int) -> tuple[int, int, int, torch.Tensor]:
    """(pad, fft_h, fft_w, rfft2 of the disk kernel centred at the origin).

    The image is padded by the kernel's half width with REFLECT_101 borders (as
    cv2.filter2D) and the FFT size leaves room for the kernel, so the circular
    convolution equals the linear one on every output pixel.
    """
    radius, alias = DEFOCUS[severity - 1]
    # the reference's kernel is float32 (its weights sum to slightly off 1, which
    # decides the truncation of flat regions); filter2D then works in float64
    kernel = torch.from_numpy(_disk_kernel(radius, alias).astype(np.float32).astype(np.float64))
    pad = kernel.shape[0] // 2
    fh, fw = (_fft_size(side + 2 * pad) for side in (h, w))
    full = torch.zeros((fh, fw), dtype=torch.float64)
    full[: kernel.shape[0], : kernel.shape[1]] = kernel
    full = torch.roll(full, (-pad, -pad), dims=(0, 1))
    return pad, fh, fw, torch.fft.rfft2(full).to(torch.complex64)


def _fft_size(n: int) -> int:
    """Smallest 2**a * 3**b * 5**c >= n (fast FFT lengths)."""
    best = 1 << (n - 1).bit_length()
    for a in (1, 3, 5, 9, 15, 25, 27, 45, 75, 81, 125, 135, 225):
        m = a
        while m < n:
            m *= 2
        best = min(best, m)
    return best


def defocus_blur(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Disk (lens defocus) blur; ``cv2.filter2D`` with REFLECT_101 borders.

    Small images: a low-rank separable operator. Large ones: FFT convolution in
    cache-sized chunks, whose cost does not grow with the disk (the separable
    form needs up to five pairs of full-side products per pixel at 224 px).
    A tiny offset before truncation (`FFT_EPS`) puts flat regions on the same
    side of their integer level as the reference, not on the FFT's rounding noise.
    """
    h, w = images.shape[-2:]
    if h * w <= Separable.DENSE_MAX_PIXELS:
        return to_uint8(_defocus_op(severity, h, w).apply(_float(images)), clamp=False)
    pad, fh, fw, spectrum = _defocus_spectrum(severity, h, w)
    spectrum = spectrum.to(images.device)
    out = torch.empty_like(images)
    chunk = max(1, FFT_CHUNK_VALUES // (images.shape[1] * fh * fw))
    for start in range(0, images.shape[0], chunk):
        x = F.pad(_float(images[start : start + chunk]), (pad, pad, pad, pad), mode="reflect")
        freq = torch.fft.rfft2(x, s=(fh, fw))
        freq *= spectrum
        y = torch.fft.irfft2(freq, s=(fh, fw))[..., pad : pad + h, pad : pad + w]
        out[start : start + chunk] = to_uint8(y.add_(FFT_EPS), clamp=True)
    return out


# ---------------------------------------------------------------------- zoom


@lru_cache(maxsize=64)
def _zoom_op(severity: int, h: int, w: int) -> Separable:
    """Average of the image and its centre-zoomed copies, as one separable sum."""
    factors = _zoom_factors(severity)
    scale = 1.0 / (len(factors) + 1)
    rows, cols = [np.eye(h) * scale], [np.eye(w)]
    for z in factors:
        rows.append(_clipped_zoom_matrix(h, float(z), keep=h) * scale)
        cols.append(_clipped_zoom_matrix(w, float(z), keep=w))
    return Separable(rows, cols)


def _clipped_zoom_matrix(size: int, zoom: float, keep: int | None = None) -> np.ndarray:
    """Reference ``clipped_zoom`` along one axis: centre crop, order-1 zoom, keep the first rows.

    Returns [keep, size]; `keep` defaults to `size` (zoom_blur crops back to the
    image, snow keeps the full zoomed length).
    """
    crop = int(np.ceil(size / float(zoom)))
    top = (size - crop) // 2
    out_len = int(round(crop * zoom))
    z = linear_zoom_matrix(crop, out_len)
    keep = out_len if keep is None else keep
    full = np.zeros((keep, size))
    full[:, top : top + crop] = z[:keep]
    return full


def _zoom_crops(severity: int, h: int, w: int) -> list[tuple[int, int, int, int, int, int]] | None:
    """Per zoom factor: (top, crop_h, out_h, left, crop_w, out_w) of the reference's
    ``clipped_zoom``, or None when a zoomed copy would be smaller than the image
    (the reference's exception path; the matrix form handles it)."""
    crops = []
    for z in _zoom_factors(severity):
        ch, cw = int(np.ceil(h / float(z))), int(np.ceil(w / float(z)))
        oh, ow = int(round(ch * float(z))), int(round(cw * float(z)))
        if oh < h or ow < w or ch < 2 or cw < 2:
            return None
        crops.append(((h - ch) // 2, ch, oh, (w - cw) // 2, cw, ow))
    return crops


ZOOM_CHUNK_VALUES = 1 << 19  # floats per chunk (2 MB): the running sum and a zoomed copy stay in cache


def zoom_blur(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Zoom (radial) blur: mean of the image and copies zoomed about the centre.

    Small images: one dense operator. Large ones: each zoomed copy is the
    reference's order-1 ``scipy.ndimage.zoom`` (grid_mode=False), i.e. a bilinear
    resize with aligned corners of the centre crop, four taps per pixel instead
    of a dense separable product (which costs two image sides per pixel and term);
    the batch goes in chunks so the running sum stays in cache.
    """
    h, w = images.shape[-2:]
    crops = None if h * w <= Separable.DENSE_MAX_PIXELS else _zoom_crops(severity, h, w)
    if crops is None:
        return to_uint8(_zoom_op(severity, h, w).apply(_float(images)), clamp=False)
    scale = 1.0 / (len(crops) + 1)
    out = torch.empty_like(images)
    chunk = max(1, ZOOM_CHUNK_VALUES // images[0].numel())
    for start in range(0, images.shape[0], chunk):
        x = _float(images[start : start + chunk])
        acc = x.clone()
        for top, ch, oh, left, cw, ow in crops:
            layer = F.interpolate(x[..., top : top + ch, left : left + cw], size=(oh, ow), mode="bilinear", align_corners=True)
            acc += layer[..., :h, :w]
        out[start : start + chunk] = to_uint8(acc.mul_(scale), clamp=False)
    return out


# --------------------------------------------------------------------- glass


@lru_cache(maxsize=64)
def _glass_schedule(h: int, w: int, delta: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Positions the reference visits, grouped into conflict-free parallel steps.

    The reference visits pixel (r, c) for r = h-delta .. delta+1 and, within a
    row, c = w-delta .. delta+1 (both descending) and "swaps" it with a random
    neighbour (r+dy, c+dx), dy, dx in [-delta, delta). Its tuple swap of two
    numpy views is in effect a copy, x[r, c] = x[r+dy, c+dx], so pixels get
    duplicated (we replicate that, it darkens dark-bordered images). Two
    visits can only touch the same pixel when their rows and columns both
    differ by less than 2*delta, so ordering the visits by
    ``2*delta*(h-r) + (w-c)`` keeps every interacting pair in the reference's
    order while the visits of one step are independent. Running the steps in
    order therefore reproduces the sequential pass exactly, with about
    2*delta*h + w steps instead of h*w.
    """
    r = np.arange(h - delta, delta, -1)
    c = np.arange(w - delta, delta, -1)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    step = 2 * delta * (h - rr) + (w - cc)
    order = np.argsort(step, kind="stable")
    step = step[order]
    flat = (rr * w + cc)[order]
    bounds = []
    if len(step):
        edges = np.flatnonzero(np.diff(step)) + 1
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [len(step)]])
        bounds = list(zip(starts.tolist(), ends.tolist(), strict=True))
    return torch.from_numpy(flat.astype(np.int64)), bounds


@lru_cache(maxsize=16)
def _glass_offsets(delta: int, w: int, device: torch.device) -> torch.Tensor:
    """Flat pixel offset dy*w + dx for each random code, (dy, dx) uniform on [-delta, delta)^2."""
    span = 2 * delta
    codes = torch.arange(CODE_LEVELS) % (span * span)
    return ((codes // span - delta) * w + (codes % span - delta)).to(device)


def _glass_shuffle(x: torch.Tensor, delta: int, iterations: int, gen: torch.Generator) -> torch.Tensor:
    """Batched exact replay of the reference's local pixel scrambling on uint8 [N, 3, H, W].

    Pixels are packed as int32 (RGB + a zero byte) in pixel-major layout
    [H*W, N], so a step moves whole pixels, its writes are contiguous rows, and
    its reads stay within a (2*delta)-pixel neighbourhood: cache-friendly, one
    `gather` and one `index_copy_` per step whatever the batch size.
    """
    n, ch, h, w = x.shape
    positions, steps = _glass_schedule(h, w, delta)
    if not steps:
        return x
    dev = x.device
    packed = torch.zeros((h, w, n, 4), dtype=torch.uint8, device=dev)
    packed[..., :ch] = x.permute(2, 3, 0, 1)
    pix = packed.view(h * w, n, 4).view(torch.int32).view(h * w, n)
    positions = positions.to(dev)
    offsets = _glass_offsets(delta, w, dev)
    for _ in range(iterations):
        codes = random_codes(gen, positions.numel() * n, dev).view(-1, n)
        src = offsets.index_select(0, codes.view(-1)).view(-1, n).add_(positions[:, None])  # x[p] = x[p + off]
        for start, end in steps:
            pix.index_copy_(0, positions[start:end], torch.gather(pix, 0, src[start:end]))
    return packed[..., :ch].permute(2, 3, 0, 1).contiguous()


def glass_blur(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur, local pixel scrambling, Gaussian blur again (frosted glass)."""
    sigma, delta, iterations = GLASS[severity - 1]
    h, w = images.shape[-2:]
    op = _gaussian_op(float(sigma), h, w)
    x = to_uint8(op.apply(_float(images)), clamp=False)  # the reference stores the first blur as uint8
    x = _glass_shuffle(x, delta, iterations, gen)
    return to_uint8(op.apply(_float(x)), clamp=False)
