"""Blur corruptions: defocus, glass, motion, zoom and Gaussian blur.

The fixed filters (defocus disk, zoom, Gaussian) are `Separable` operators
built once per (severity, size) from the reference's parameters with its border
rules folded in, so a blur of a whole batch is one or two matrix products.
Motion blur (one random angle per image) and glass blur (a sequential random
pixel walk) are replayed exactly in batched form; see `_line_blur` and
`_glass_schedule`.
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
MOTION = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # radius, sigma
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


# -------------------------------------------------------------------- motion


def motion_taps(radius: int, sigma: float, angles: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image taps of the reference's motion blur.

    Returns (rows, cols, weights), each [N, 2*radius+1]: tap i of image n reads
    ``X[y + rows[n, i], x + cols[n, i]]`` (edges replicated) with weight
    ``weights[n, i]``. The weights are a one-sided Gaussian along the angle;
    taps that would leave the image get weight 0 without renormalising, as
    the reference's early `break` does (long blurs on small images darken).
    """
    width = radius * 2 + 1
    i = np.arange(width, dtype=np.float64)
    k = np.exp(-(i**2) / (2 * sigma**2))
    k /= k.sum()
    rad = np.deg2rad(np.asarray(angles, dtype=np.float64))[:, None]
    # the reference's dy = -ceil(i*sin - 0.5) shifts the image by dy, i.e. reads row y - dy
    rows = np.ceil(i * np.sin(rad) - 0.5).astype(np.int64)
    cols = np.ceil(i * np.cos(rad) - 0.5).astype(np.int64)
    inside = np.cumprod((np.abs(rows) < h) & (np.abs(cols) < w), axis=1).astype(bool)  # stop at the first tap outside
    return rows, cols, np.where(inside, k, 0.0)


def _filters(along: np.ndarray, cross: np.ndarray, weights: np.ndarray, shear: np.ndarray, length: int,
             band: int, starts: np.ndarray, span: int) -> torch.Tensor:
    """Per-image matrices F_e[x, x'] (e = -1, 0, 1) for the taps that stay inside the blur axis,
    cut into bands: block t holds output lines [t*band, (t+1)*band) and input lines
    [starts[t], starts[t] + span), the only ones its taps reach.

    Tap (a, b) at output x reads line x' = x + a at cross offset b; the sheared
    layout supplies cross offset shear[x'] - shear[x], and the residual
    e = b - (shear[x'] - shear[x]) is always -1, 0 or 1 (|slope| <= 1 and
    both offsets are rounded within half a pixel), so three shifted views
    reproduce the reference's offsets exactly. Returns float32 [3, T, N, band, span].
    """
    n = along.shape[0]
    blocks = len(starts)
    x = np.arange(length, dtype=np.int64)[None, :, None]
    src = x + along[:, None, :]  # [N, L, T]
    inside = (src >= 0) & (src < length) & (weights[:, None, :] > 0)
    img, xs, tap = np.nonzero(inside)
    src = src[img, xs, tap]
    e = cross[img, tap] - (shear[img, src] - shear[img, xs])
    if np.any(np.abs(e) > 1):  # impossible for |slope| <= 1; keep the filters honest if not
        raise AssertionError("motion blur residual offset outside [-1, 1]")
    block = xs // band
    col = src - starts[block]
    if np.any((col < 0) | (col >= span)):
        raise AssertionError("motion blur tap outside its band")
    flat = (((((e + 1) * blocks + block) * n + img) * band + xs % band) * span) + col
    out = torch.zeros(3 * blocks * n * band * span, dtype=torch.float32)
    out.index_add_(0, torch.from_numpy(flat), torch.from_numpy(weights[img, tap].astype(np.float32)))
    return out.view(3, blocks, n, band, span)


MOTION_BAND = 32  # output lines per block of the banded line filters


def _bands(along: np.ndarray, weights: np.ndarray, length: int) -> tuple[int, np.ndarray, int]:
    """(band, first input line per block, input lines per block) for the line filters.

    A block of `band` output lines reads only the lines its taps reach, so each
    batched product has `band + reach` columns instead of the whole axis.
    """
    used = along[weights > 0] if np.any(weights > 0) else np.zeros(1, dtype=np.int64)
    lo, hi = int(min(used.min(), 0)), int(max(used.max(), 0))
    band = min(MOTION_BAND, length)
    span = band + hi - lo
    if span >= length or band >= length:
        return length, np.zeros(1, dtype=np.int64), length
    blocks = -(-length // band)
    starts = np.clip(np.arange(blocks) * band + lo, 0, length - span)
    return band, starts.astype(np.int64), span


def _edge_terms(xt: torch.Tensor, along: np.ndarray, cross: np.ndarray, weights: np.ndarray) -> torch.Tensor:
    """Contribution of the taps that run off the end of the blur axis: [N, L, C*S].

    Such a tap reads the edge line (the reference clamps the index) at its
    cross offset. Along one image's line all offsets have one sign, so the
    taps past the edge for output x are those from a first index on: one
    batched product of a [L, taps] weight mask with the cross-shifted edge lines.
    """
    n, length, ch, side = xt.shape
    dev = xt.device
    forward = along.max(axis=1) > 0  # the line runs towards the high end of the axis
    edge = torch.from_numpy(np.where(forward, length - 1, 0)).to(dev)
    lines = xt[torch.arange(n, device=dev), edge]  # [N, C, S]
    taps = along.shape[1]
    src = np.clip(np.arange(side)[None, None, :] + cross[:, :, None], 0, side - 1)  # [N, T, S]
    index = torch.from_numpy(src).to(dev)[:, :, None, :].expand(n, taps, ch, side)
    shifted = torch.gather(lines[:, None].expand(n, taps, ch, side), 3, index)  # [N, T, C, S]
    dist = np.where(forward[:, None], length - 1 - np.arange(length)[None, :], np.arange(length)[None, :])
    past = np.abs(along)[:, None, :] > dist[:, :, None]  # [N, L, T]: the tap leaves the axis
    mask = torch.from_numpy(np.where(past, weights[:, None, :], 0.0).astype(np.float32)).to(dev)
    return torch.bmm(mask, shifted.reshape(n, taps, ch * side))


def _line_blur(xt: torch.Tensor, along: np.ndarray, cross: np.ndarray, weights: np.ndarray, slope: np.ndarray) -> torch.Tensor:
    """Exact motion blur of float [N, L, C, S] along lines running mostly along L (|slope| <= 1).

    Tap i of image n reads ``X[clamp(x + along[n,i]), clamp(y + cross[n,i])]``.
    Each line x of the blur axis is shifted across by shear[x] = round(x*slope),
    which turns most of every tap's cross offset into a common shift; the
    remaining -1/0/+1 are three column offsets of the same sheared tensor (each
    channel carries two spare columns, so the offsets never mix channels), and
    the blur along L is three batched matrix products with per-image filters.
    Taps past the end of the blur axis are added by `_edge_terms`.
    """
    n, length, ch, side = xt.shape
    dev = xt.device
    keep = max(1, int(np.max(np.nonzero(weights.any(axis=0))[0], initial=0)) + 1)  # taps after the early stop weigh 0
    along, cross, weights = along[:, :keep], cross[:, :keep], weights[:, :keep]
    shear = np.round(np.arange(length)[None, :] * slope[:, None]).astype(np.int64)  # [N, L]
    shear -= shear.min(axis=1, keepdims=True)
    span = int(shear.max()) if shear.size else 0
    ext = side + span  # sheared length; +2 spare columns per channel for e = -1, +1
    # Z[n, x', c, r] = X[n, x', c, clamp(r - span - 1 + shear[x'])], r in [0, ext + 2)
    # (indices built in torch and shared by the channels through expand: no per-pixel index arrays)
    shear_t = torch.from_numpy(shear).to(dev)
    src = (torch.arange(ext + 2, device=dev) - (span + 1))[None, None, :] + shear_t[:, :, None]
    z = torch.gather(xt, 3, src.clamp_(0, side - 1)[:, :, None, :].expand(n, length, ch, ext + 2))
    z = z.view(n, length, ch * (ext + 2))
    width = ch * (ext + 2) - 2
    band, starts, reads = _bands(along, weights, length)
    filters = _filters(along, cross, weights, shear, length, band, starts, reads).to(dev)
    if len(starts) == 1:  # one block (small images): no block copies, un-shear with flat indices
        sheared = torch.bmm(filters[1, 0], z[:, :, 1 : 1 + width])  # column j: channel j // (ext+2), r = j % (ext+2)
        sheared.baddbmm_(filters[0, 0], z[:, :, :width])
        sheared.baddbmm_(filters[2, 0], z[:, :, 2 : 2 + width])
        # out[n, x, c, y] = sheared[n, x, c*(ext+2) + y + span - shear[x]]
        base = torch.arange(ch, device=dev)[:, None] * (ext + 2) + torch.arange(side, device=dev) + span
        back = base[None, None] - shear_t[:, :, None, None]
        out = torch.gather(sheared, 2, back.view(n, length, ch * side)).view(n, length, ch, side)
        out += _edge_terms(xt, along, cross, weights).view(n, length, ch, side)
        return out
    # column j of `sheared`: channel j // (ext+2), r = j % (ext+2); the last two columns are never read
    sheared = torch.empty((n, length, ch * (ext + 2)), dtype=xt.dtype, device=dev)
    for t, lo in enumerate(starts.tolist()):
        rows = min(band, length - t * band)
        zt = z[:, lo : lo + reads]
        block = torch.bmm(filters[1, t], zt[:, :, 1 : 1 + width])
        block.baddbmm_(filters[0, t], zt[:, :, :width])
        block.baddbmm_(filters[2, t], zt[:, :, 2 : 2 + width])
        sheared[:, t * band : t * band + rows, :width] = block[:, :rows]
    # out[n, x, c, y] = sheared[n, x, c, y + span - shear[x]]
    back = (torch.arange(side, device=dev) + span)[None, None, :] - shear_t[:, :, None]
    out = torch.gather(sheared.view(n, length, ch, ext + 2), 3, back[:, :, None, :].expand(n, length, ch, side))
    out += _edge_terms(xt, along, cross, weights).view(n, length, ch, side)
    return out.view(n, length, ch, side)


def apply_motion(x: torch.Tensor, angles: np.ndarray, radius: int, sigma: float) -> torch.Tensor:
    """Motion-blur float [N, C, H, W] images, image n along angles[n] (degrees), exactly
    as the reference (same taps, weights, edge handling and early stop).

    Mostly horizontal lines blur along W, mostly vertical ones along H; both go
    through `_line_blur` with layout [N, blur axis, C, other axis].
    """
    n, _, h, w = x.shape
    rows, cols, weights = motion_taps(radius, sigma, angles, h, w)
    rad = np.deg2rad(np.asarray(angles, dtype=np.float64))
    vertical = np.abs(np.sin(rad)) > np.abs(np.cos(rad))
    out = None
    for flag in (False, True):
        idx = np.flatnonzero(vertical == flag)
        if idx.size == 0:
            continue
        xs = x if idx.size == n else x.index_select(0, torch.from_numpy(idx).to(x.device))
        if flag:  # blur along H: [N, H, C, W]
            res = _line_blur(xs.permute(0, 2, 1, 3).contiguous(), rows[idx], cols[idx], weights[idx], np.cos(rad[idx]) / np.sin(rad[idx]))
            res = res.permute(0, 2, 1, 3)
        else:  # blur along W: [N, W, C, H]
            res = _line_blur(xs.permute(0, 3, 1, 2).contiguous(), cols[idx], rows[idx], weights[idx], np.sin(rad[idx]) / np.cos(rad[idx]))
            res = res.permute(0, 2, 3, 1)
        if idx.size == n:
            return res
        if out is None:
            out = torch.empty_like(x)
        out.index_copy_(0, torch.from_numpy(idx).to(x.device), res.contiguous())
    return out if out is not None else x.clone()


def random_angles(gen: torch.Generator, n: int, low: float, high: float, device: torch.device) -> np.ndarray:
    """Per-image angles uniform in [low, high) degrees (float64 numpy)."""
    u = torch.rand(n, generator=gen, device=device, dtype=torch.float64).cpu().numpy()
    return low + (high - low) * u


def motion_blur(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Linear motion blur at a random angle in [-45, 45) degrees per image."""
    radius, sigma = MOTION[severity - 1]
    angles = random_angles(gen, images.shape[0], -45.0, 45.0, images.device)
    return to_uint8(apply_motion(_float(images), angles, radius, sigma), clamp=False).contiguous()


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
