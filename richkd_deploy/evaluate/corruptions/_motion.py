"""Motion blur: a linear blur at one random angle per image, replayed exactly in
batched form as banded line filters (see `_line_blur`); snow reuses `apply_motion`."""

from __future__ import annotations

import numpy as np
import torch

from ._blur import _float
from ._common import to_uint8

MOTION = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # radius, sigma


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
