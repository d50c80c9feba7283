"""Weather corruptions: snow, frost, fog (and the extra spatter)."""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._blur import _clipped_zoom_matrix, _gaussian_op
from ._common import Separable, gaussian_matrix, random_uniform, to_uint8
from ._motion import apply_motion, random_angles

SNOW = (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)  # loc, scale, zoom, threshold, blur radius, blur sigma, blend
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))
SPATTER = (
    (0.65, 0.3, 4, 0.69, 0.6, 0),
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
)  # loc, scale, sigma, threshold, intensity / mud sigma, mud?

_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
_GREY = (0.299, 0.587, 0.114)  # OpenCV RGB2GRAY


# ---------------------------------------------------------------------- snow


@lru_cache(maxsize=32)
def _snow_zoom(severity: int, h: int, w: int) -> tuple[int, int, Separable]:
    """Centre crop sizes and the order-1 zoom of the snow layer (kept at full zoomed size)."""
    zoom = float(SNOW[severity - 1][2])
    rows = _clipped_zoom_matrix(h, zoom)
    cols = _clipped_zoom_matrix(w, zoom)
    crop_h, crop_w = int(np.ceil(h / zoom)), int(np.ceil(w / zoom))
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    op = Separable([rows[:, top : top + crop_h]], [cols[:, left : left + crop_w]])
    return crop_h, crop_w, op


def snow(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Falling snow: a thresholded, zoomed noise layer, motion-blurred, added twice
    (once rotated by 180 degrees) over a brightened, greyed image."""
    loc, scale, _, threshold, radius, sigma, blend = SNOW[severity - 1]
    n, _, h, w = images.shape
    crop_h, crop_w, zoom = _snow_zoom(severity, h, w)
    # Only the centre crop of the reference's full-size noise layer is ever used.
    layer = torch.randn(n, crop_h, crop_w, generator=gen, device=images.device).mul_(scale).add_(loc)
    layer = zoom.apply(layer)
    layer = torch.where(layer < threshold, 0.0, layer).clamp_(0.0, 1.0)
    angles = random_angles(gen, n, -135.0, -45.0, images.device)
    layer = apply_motion(layer.unsqueeze(1), angles, radius, sigma)
    layer = torch.round(layer[..., :h, :w].mul_(255.0))  # the reference stores it as uint8
    layer += torch.flip(layer, dims=(-2, -1))  # the layer and its 180-degree rotation
    x = images.to(torch.float32)
    # OpenCV's grey, *1.5 + 0.5, in 0..255 units; three plane passes, not an einsum (a batched GEMM with K = 3)
    grey = x[:, :1] * (1.5 * _GREY[0])
    grey.add_(x[:, 1:2], alpha=1.5 * _GREY[1]).add_(x[:, 2:3], alpha=1.5 * _GREY[2]).add_(127.5)
    out = torch.addcmul(layer, torch.maximum(x, grey), x.new_tensor(1.0 - blend))
    return to_uint8(out.add_(x, alpha=blend))


# --------------------------------------------------------------------- frost


def _reference_frost_dir() -> Path | None:
    """The reference package's frost/ folder, found without importing the package."""
    try:
        spec = importlib.util.find_spec("imagecorruptions")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "frost"
    return folder if all((folder / f).is_file() for f in _FROST_FILES) else None


def frost_source() -> str:
    """'reference' when the reference's six ice photographs are used, else 'procedural'."""
    return "reference" if _reference_frost_dir() is not None else "procedural"


@lru_cache(maxsize=1)
def _frost_textures() -> tuple[torch.Tensor, ...]:
    """Six RGB uint8 [3, h, w] ice textures: the reference's photos, or procedural ones."""
    folder = _reference_frost_dir()
    if folder is None:
        return tuple(_procedural_frost(i) for i in range(len(_FROST_FILES)))
    from PIL import Image

    textures = []
    for name in _FROST_FILES:
        with Image.open(folder / name) as im:
            arr = np.asarray(im.convert("RGB"))
        textures.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
    return tuple(textures)


def _procedural_frost(index: int, height: int = 384, width: int = 576) -> torch.Tensor:
    """A deterministic ice-like texture: sharpened plasma noise, pale blue-white."""
    gen = torch.Generator().manual_seed(1000 + index)
    size = 1 << max(height - 1, width - 1).bit_length()
    base = plasma_fractal(1, size, 1.6, gen, torch.device("cpu"))[0, :height, :width]
    fine = plasma_fractal(1, size, 1.2, gen, torch.device("cpu"))[0, :height, :width]
    ice = (0.6 * base + 0.4 * fine) ** 2.5
    tint = torch.tensor([0.82, 0.9, 1.0])[:, None, None]
    return (ice[None] * tint * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def _frost_scale(tex_h: int, tex_w: int, h: int, w: int) -> float:
    """The reference's resize factor: fit the image, then 1.1x."""
    if tex_h >= h and tex_w >= w:
        factor = 1.0
    elif tex_h < h and tex_w >= w:
        factor = h / tex_h
    elif tex_h >= h and tex_w < w:
        factor = w / tex_w
    else:
        factor = max(h / tex_h, w / tex_w)
    return factor * 1.1


@lru_cache(maxsize=8)
def _scaled_frost(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Textures resized (bicubic, like cv2 INTER_CUBIC) as the reference does for this image size."""
    out = []
    for tex in _frost_textures():
        th, tw = tex.shape[-2:]
        factor = _frost_scale(th, tw, h, w)
        size = (int(math.ceil(th * factor)), int(math.ceil(tw * factor)))
        big = F.interpolate(tex[None].float(), size=size, mode="bicubic", align_corners=False)
        out.append(big[0].round_().clamp_(0, 255).to(torch.uint8).to(device))
    return tuple(out)


def frost(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Blend with a random crop of a random ice texture: c0 * x + c1 * ice."""
    c0, c1 = FROST[severity - 1]
    n, ch, h, w = images.shape
    device = images.device
    textures = _scaled_frost(h, w, device)
    which = torch.randint(0, len(textures), (n,), generator=gen, device=device)
    u = torch.rand(n, 2, generator=gen, device=device, dtype=torch.float64)
    crops = torch.empty((n, 3, h, w), dtype=torch.uint8, device=device)
    sizes = torch.tensor([tex.shape[-2:] for tex in textures], dtype=torch.float64, device=device)[which]
    # randint(0, th - h): the last row never starts a crop
    corners = (u * (sizes - torch.tensor([h, w], dtype=torch.float64, device=device))).long().tolist()
    for i, (t, (top, left)) in enumerate(zip(which.tolist(), corners, strict=True)):
        crops[i] = textures[t][:, top : top + h, left : left + w]  # plain slices: no index tensors
    idx = torch.add(crops.to(torch.int32), images, alpha=256)  # pixel * 256 + ice
    return _frost_table(severity, device).index_select(0, idx.view(-1)).view_as(images)


@lru_cache(maxsize=16)
def _frost_table(severity: int, device: torch.device) -> torch.Tensor:
    """uint8(clip(c0 * pixel + c1 * ice, 0, 255)) for every byte pair, in float64 like the reference."""
    c0, c1 = FROST[severity - 1]
    values = torch.arange(256, dtype=torch.float64)
    table = (c0 * values[:, None] + c1 * values[None, :]).clamp_(0, 255)
    return table.to(torch.uint8).view(-1).to(device)


# ----------------------------------------------------------------------- fog


def plasma_fractal(
    n: int, mapsize: int, wibbledecay: float, gen: torch.Generator, device: torch.device, normalise: bool = True
) -> torch.Tensor:
    """Batched diamond-square height maps [n, mapsize, mapsize] in [0, 1] (the reference's).

    Same recursion as the reference (wrap-around neighbours, noise amplitude
    wibble**2 shrinking by wibbledecay**2 per level), but each level keeps the
    coarse grid as its own contiguous tensor and interleaves the four new point
    sets in one copy, instead of strided writes into the full map.
    """
    if mapsize < 1 or mapsize & (mapsize - 1):
        raise ValueError("mapsize must be a power of two")
    levels = mapsize.bit_length() - 1
    total = 3 * sum(4**level for level in range(levels))
    noise = random_uniform(gen, n * max(total, 1), device).view(n, -1).mul_(2.0).sub_(1.0)
    return plasma_from_noise(noise, mapsize, wibbledecay, normalise)


def plasma_from_noise(noise: torch.Tensor, mapsize: int, wibbledecay: float, normalise: bool = True) -> torch.Tensor:
    """Diamond-square from given noise in [-1, 1]: [n, >= mapsize**2 - 1] -> [n, mapsize, mapsize].

    Per level k (grid 2**k -> 2**(k+1)) it consumes 3 * 4**k values: the
    squares' noise, then the diamonds on the corners' rows, then the diamonds
    on the squares' rows, each row-major; the reference draws its uniforms in
    that order, each as ``wibble * uniform(-wibble, wibble)``.
    """
    n = noise.shape[0]
    levels = mapsize.bit_length() - 1
    grid = torch.zeros((n, 1, 1), dtype=torch.float32, device=noise.device)
    used = 0
    wibble = 100.0
    for level in range(levels):
        k = 1 << level
        parts = noise[:, used : used + 3 * k * k].reshape(n, 3, k, k) * (wibble * wibble)
        used += 3 * k * k
        corner = grid
        down = torch.roll(corner, -1, dims=1)
        square = (corner + down + torch.roll(corner + down, -1, dims=2)).mul_(0.25).add_(parts[:, 0])
        # diamonds on the corners' rows: squares above and below, corners left and right
        across = (square + torch.roll(square, 1, dims=1) + corner + torch.roll(corner, -1, dims=2)).mul_(0.25).add_(parts[:, 1])
        # diamonds on the squares' rows: squares left and right, corners above and below
        along = (square + torch.roll(square, 1, dims=2) + corner + down).mul_(0.25).add_(parts[:, 2])
        top = torch.stack((corner, across), dim=-1)  # [n, k, k, 2]: even rows
        bottom = torch.stack((along, square), dim=-1)  # odd rows
        grid = torch.stack((top, bottom), dim=2).reshape(n, 2 * k, 2 * k)
        wibble /= wibbledecay
    if not normalise:
        return grid
    flat = grid.reshape(n, -1)
    flat -= flat.amin(dim=1, keepdim=True)
    flat /= flat.amax(dim=1, keepdim=True).clamp_min(1e-12)
    return flat.view(n, mapsize, mapsize)


def fog(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Add a plasma-fractal haze, then rescale so the image maximum is kept in range.

    ``(x + 255*c*haze) * gain`` with haze the min-max normalised fractal and
    gain = peak / (peak + c); the normalisation is folded into one per-pixel
    term so the full-size work is a single fused multiply-add.
    """
    c0, decay = FOG[severity - 1]
    n, _, h, w = images.shape
    size = 1 << (max(h, w) - 1).bit_length()
    raw = plasma_fractal(n, size, decay, gen, images.device, normalise=False)[:, None, :h, :w]
    flat = raw.reshape(n, -1)
    lo = flat.amin(dim=1).view(n, 1, 1, 1)
    scale = 1.0 / (flat.amax(dim=1).view(n, 1, 1, 1) - lo).clamp_min(1e-12)
    peak = images.amax(dim=(1, 2, 3), keepdim=True).to(torch.float32) / 255.0
    gain = peak / (peak + c0)
    haze = (raw - lo).mul_(scale * gain * (255.0 * c0))  # [N, 1, H, W]
    return to_uint8(torch.addcmul(haze, images, gain))


# ------------------------------------------------------------------- spatter


@lru_cache(maxsize=32)
def _smoother(sigma: float, h: int, w: int) -> Separable:
    return Separable([gaussian_matrix(sigma, h)], [gaussian_matrix(sigma, w)])


def _box3(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``blur(.., (3, 3))`` (mean filter, REFLECT_101 borders) on [N, 1, H, W]."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


def _distance_to_edges(edges: torch.Tensor, cap: int = 20) -> torch.Tensor:
    """Approximate Euclidean distance to the nearest edge pixel, truncated at `cap`.

    Grows the edge set alternately with 4- and 8-neighbourhoods (an octagonal
    metric within about 8% of Euclidean), which is enough for the reference's
    ``distanceTransform`` whose output is truncated, blurred and equalised.
    """
    dist = torch.full(edges.shape, float(cap), device=edges.device)
    reached = edges.to(torch.float32)
    dist[edges] = 0.0
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=edges.device)[None, None]
    for step in range(1, cap):
        if step % 2:
            grown = F.conv2d(F.pad(reached, (1, 1, 1, 1)), cross) > 0
        else:
            grown = F.max_pool2d(reached, 3, stride=1, padding=1) > 0
        new = grown & (reached == 0)
        dist[new] = float(step)
        reached = grown.to(torch.float32)
    return dist


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``equalizeHist`` per image on uint8-valued float [N, 1, H, W]."""
    n = x.shape[0]
    idx = x.view(n, -1).long()
    hist = torch.zeros((n, 256), device=x.device).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
    cdf = hist.cumsum(1)
    first = torch.argmax((hist > 0).to(torch.int8), dim=1, keepdim=True)
    first_count = hist.gather(1, first)
    total = float(idx.shape[1])
    scale = 255.0 / (total - first_count).clamp_min(1.0)
    lut = torch.round((cdf - first_count) * scale).clamp_(0, 255)
    lut = torch.where(torch.arange(256, device=x.device)[None] <= first, 0.0, lut)
    return lut.gather(1, idx).view_as(x)


_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])


def spatter(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Water droplets (severity 1-3) or mud (4-5) splashed on the image (extra corruption).

    The mud branch follows the reference step by step; the water branch
    replaces OpenCV's Canny + distance transform with an edge map of the
    liquid mask and an approximate distance (see `_distance_to_edges`).
    """
    loc, scale, sigma, threshold, intensity, mud = SPATTER[severity - 1]
    n, _, h, w = images.shape
    device = images.device
    liquid = torch.randn(n, h, w, generator=gen, device=device).mul_(scale).add_(loc)
    liquid = _smoother(float(sigma), h, w).apply(liquid)
    liquid = torch.where(liquid < threshold, 0.0, liquid)
    x = images.to(torch.float32) / 255.0
    if mud:
        mask = (liquid > threshold).to(torch.float32)
        m = _gaussian_op(float(intensity), h, w).apply(mask)
        m = torch.where(m < 0.8, 0.0, m).unsqueeze(1)
        colour = torch.tensor([63.0, 42.0, 20.0], device=device)[None, :, None, None] / 255.0
        out = x * (1.0 - m) + colour * m
        return to_uint8(out.mul_(255.0))
    layer = (liquid * 255.0).floor_().clamp_(0, 255).unsqueeze(1)  # uint8 in the reference
    inside = layer > 0
    outside_near = F.max_pool2d(inside.to(torch.float32), 3, stride=1, padding=1) > 0
    edges = outside_near & ~inside | (inside & (F.max_pool2d((~inside).to(torch.float32), 3, 1, 1) > 0))
    dist = _distance_to_edges(edges)
    dist = _box3(dist).floor_()
    dist = _equalize(dist)
    dist = F.conv2d(F.pad(dist, (1, 1, 1, 1), mode="reflect"), _EMBOSS.to(device)[None, None]).clamp_(0, 255)
    dist = _box3(dist)
    m = layer * dist
    m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12) * intensity
    colour = torch.tensor([175.0, 238.0, 238.0], device=device)[None, :, None, None] / 255.0
    out = (x + m * colour).clamp_(0.0, 1.0)
    return to_uint8(out.mul_(255.0))
