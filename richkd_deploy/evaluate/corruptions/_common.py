"""Shared machinery for the batched corruptions: seeding, cheap randomness,
separable linear operators and the float-to-uint8 step.

Why these helpers exist: on a CPU the cost of a cheap corruption on a batch of
small images is dominated by random-number generation and by memory passes
over the data, not by arithmetic. So

* per-pixel randomness comes from `random_codes`: uniform integer codes that
  on the CPU are a zero-copy slice, at a random offset, of a fixed cached pool
  of random codes, and on other devices are drawn afresh. Within one call the
  codes are independent and uniform; calls with other seeds, names or
  severities see the pool at other offsets, i.e. shifted copies of the same
  values, which biases no per-image statistic;
* every linear filter that the reference applies (Gaussian blurs, the
  defocus disk, zoom, box down-sampling) is a sum of separable operators
  ``sum_r A_r X B_r^T`` with the border rule folded into the small matrices
  (`Separable`), applied as two thin matrix products or one dense one.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

import numpy as np
import torch

CODE_BITS = 14
CODE_LEVELS = 1 << CODE_BITS
_POOL_SIZE = 1 << 23
_POOL_SEED = 0x5EED_C0DE


def make_generator(device: torch.device, seed: int, name: str, severity: int) -> torch.Generator:
    """A generator on `device` seeded from (seed, name, severity).

    Hashing the triple (not adding numbers) keeps the streams of different
    corruptions and severities unrelated for the same user seed.
    """
    digest = hashlib.blake2b(f"{int(seed)}|{name}|{int(severity)}".encode(), digest_size=8).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return gen


@lru_cache(maxsize=8)
def _code_pool(device: torch.device, bits: int, shift: int) -> torch.Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed(_POOL_SEED + 1000 * bits + shift)
    codes = torch.randint(0, 1 << bits, (_POOL_SIZE,), generator=gen, device=device, dtype=torch.int32)
    return codes << shift if shift else codes


def random_codes(gen: torch.Generator, count: int, device: torch.device, bits: int = CODE_BITS, shift: int = 0) -> torch.Tensor:
    """`count` independent uniform integers in [0, 2**bits), times 2**shift, as int32 [count].

    On the CPU the result is a read-only view into a cached pool (see module
    doc): never modify it in place. Counts above half the pool are assembled
    from several random slices.
    """
    if device.type != "cpu":
        codes = torch.randint(0, 1 << bits, (count,), generator=gen, device=device, dtype=torch.int32)
        return codes << shift if shift else codes
    pool = _code_pool(device, bits, shift)
    limit = _POOL_SIZE // 2
    sizes = [limit] * (count // limit) + ([count % limit] if count % limit else [])
    starts = torch.randint(0, _POOL_SIZE - limit + 1, (max(len(sizes), 1),), generator=gen).tolist()
    parts = [pool[start : start + size] for start, size in zip(starts, sizes, strict=False)]
    if not parts:
        return pool[:0]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def random_uniform(gen: torch.Generator, count: int, device: torch.device) -> torch.Tensor:
    """`count` uniform floats in (0, 1) on a 1/16384 grid, float32 [count] (a new tensor)."""
    codes = random_codes(gen, count, device).to(torch.float32)
    return codes.add_(0.5).mul_(1.0 / CODE_LEVELS)


def to_uint8(x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Clip to [0, 255] and truncate, as the reference's ``np.uint8(clip(..)*255)``.

    ``clamp=False`` skips the clip (one pass fewer) for convex combinations of
    pixels, whose values lie in (-1, 256) where truncation already gives 0..255.
    """
    return (x.clamp_(0.0, 255.0) if clamp else x).to(torch.uint8)


# ---------------------------------------------------------------- 1-D operators


def border_index(idx: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Map out-of-range integer indices into [0, size) by a border rule.

    Modes use SciPy's names: 'nearest' (aaa|abc|ccc), 'reflect' (cba|abc|cba,
    half-sample symmetric), 'mirror' (cb|abc|ba, OpenCV's REFLECT_101).
    """
    idx = np.asarray(idx, dtype=np.int64)
    if mode == "nearest":
        return np.clip(idx, 0, size - 1)
    if size == 1:
        return np.zeros_like(idx)
    if mode == "reflect":
        period = 2 * size
        idx = np.mod(idx, period)
        return np.where(idx >= size, period - 1 - idx, idx)
    if mode == "mirror":
        period = 2 * size - 2
        idx = np.mod(idx, period)
        return np.where(idx >= size, period - idx, idx)
    raise ValueError(f"unknown border mode {mode!r}")


def correlation_matrix(kernel: np.ndarray, size: int, mode: str) -> np.ndarray:
    """[size, size] matrix applying a centred 1-D correlation with a border rule."""
    kernel = np.asarray(kernel, dtype=np.float64)
    radius = (len(kernel) - 1) // 2
    out = np.zeros((size, size), dtype=np.float64)
    rows = np.arange(size)
    for j, w in enumerate(kernel):
        np.add.at(out, (rows, border_index(rows + j - radius, size, mode)), w)
    return out


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """SciPy's ``gaussian_filter1d`` weights (radius ``int(truncate*sigma+0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return w / w.sum()


def gaussian_matrix(sigma: float, size: int, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """1-D Gaussian filter as a matrix, like ``scipy.ndimage.gaussian_filter1d``."""
    return correlation_matrix(gaussian_kernel_1d(sigma, truncate), size, mode)


def linear_zoom_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] order-1 ``scipy.ndimage.zoom`` (grid_mode=False) along one axis."""
    out = np.zeros((out_size, in_size), dtype=np.float64)
    if out_size == 1 or in_size == 1:
        out[:, 0] = 1.0
        return out
    pos = np.arange(out_size) * ((in_size - 1) / (out_size - 1))
    lo = np.clip(np.floor(pos).astype(np.int64), 0, in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = pos - lo
    rows = np.arange(out_size)
    np.add.at(out, (rows, lo), 1.0 - frac)
    np.add.at(out, (rows, hi), frac)
    return out


# ---------------------------------------------------------- separable operators


class Separable:
    """A linear map ``X -> sum_r A_r X B_r^T`` on [.., Hi, Wi] -> [.., Ho, Wo].

    Applied either as two matrix products without permutes (rows first,
    ``[Ho*R, Hi] @ X`` gives [M, Ho, R*Wi], then one GEMM with the stacked
    column operators), or, for small images and many terms, as dense
    operators: one large GEMM runs several times faster per multiply-add than
    the thin ones, which wins while Hi*Wi is below a few times R*(Hi + Wi).
    A dense operator is split into bands of output rows, each reading only the
    input rows it depends on (a local filter such as zoom blur needs a third
    of them), as one batched GEMM over the bands.
    """

    DENSE_MAX_PIXELS = 1024  # a 32x32 operator is 4 MB; 64x64 would be 64 MB per cached filter
    DENSE_ADVANTAGE = 3.5
    BAND_ROWS = 4

    def __init__(self, rows: list[np.ndarray], cols: list[np.ndarray]):
        if len(rows) != len(cols) or not rows:
            raise ValueError("need as many row as column operators, at least one")
        a = np.stack(rows)  # [R, Ho, Hi]
        b = np.stack(cols)  # [R, Wo, Wi]
        self.terms, self.ho, self.hi = a.shape
        _, self.wo, self.wi = b.shape
        pixels = self.hi * self.wi
        self.dense = pixels <= self.DENSE_MAX_PIXELS and pixels < self.DENSE_ADVANTAGE * self.terms * (self.hi + self.wi)
        self._band_rows: torch.Tensor | None = None
        if self.dense:
            self._mats = self._banded(a, b)
        else:
            rows_op = a.transpose(1, 0, 2).reshape(-1, self.hi)
            cols_op = b.transpose(0, 2, 1).reshape(-1, self.wo)
            self._mats = (torch.from_numpy(np.ascontiguousarray(rows_op)).float(), torch.from_numpy(np.ascontiguousarray(cols_op)).float())
        self._dev: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _banded(self, a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Per band of output rows: the input rows it reads ([T*K]) and its operator [T, K*Wi, band*Wo]."""
        band = self.BAND_ROWS if self.ho % self.BAND_ROWS == 0 else self.ho
        bands = self.ho // band
        used = np.abs(a).sum(axis=0) > 0  # [Ho, Hi]
        needed = [np.flatnonzero(used[t * band : (t + 1) * band].any(axis=0)) for t in range(bands)]
        k = max(1, max(len(n) for n in needed))
        if k > 0.7 * self.hi:  # bands would save little: one dense operator
            band, bands, k = self.ho, 1, self.hi
            needed = [np.arange(self.hi)]
        rows = np.zeros((bands, k), dtype=np.int64)
        ops = np.zeros((bands, k, self.wi, band, self.wo))
        for t, need in enumerate(needed):
            rows[t, : len(need)] = need
            rows[t, len(need) :] = need[-1] if len(need) else 0  # padding rows get zero weights
            sub = a[:, t * band : (t + 1) * band][:, :, need]  # [R, band, K_t]
            ops[t, : len(need)] = np.einsum("ryh,rxw->hwyx", sub, b)
        self._band_rows = torch.from_numpy(rows.reshape(-1))
        op = ops.reshape(bands, k * self.wi, band * self.wo)
        return (torch.from_numpy(np.ascontiguousarray(op)).float(), self._band_rows)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._dev:
            self._dev[device] = tuple(m.to(device) for m in self._mats)
        return self._dev[device]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to float32 ``x`` of shape [..., Hi, Wi]."""
        mats = self._on(x.device)
        lead = x.shape[:-2]
        x = x.reshape(-1, self.hi, self.wi)
        m = x.shape[0]
        if self.dense:
            op, rows = mats
            bands = op.shape[0]
            if bands == 1:
                return (x.reshape(m, -1) @ op[0]).view(*lead, self.ho, self.wo)
            gathered = x.index_select(1, rows).view(m, bands, -1).transpose(0, 1)  # [T, M, K*Wi]
            out = torch.bmm(gathered, op)  # [T, M, band*Wo]
            return out.transpose(0, 1).reshape(*lead, self.ho, self.wo)
        a, b = mats
        u = torch.bmm(a.expand(m, *a.shape), x)  # [M, Ho*R, Wi]
        out = u.view(-1, self.ho, self.terms * self.wi) @ b
        return out.view(*lead, self.ho, self.wo)


def low_rank_terms(kernel: np.ndarray, tol: float = 1e-4) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a 2-D kernel into separable (column, row) 1-D pairs by SVD.

    Keeps the fewest terms whose dropped singular values are below
    ``tol`` times the largest, so a disk kernel costs a few 1-D passes.
    """
    u, s, vt = np.linalg.svd(np.asarray(kernel, dtype=np.float64))
    keep = max(1, int(np.sum(s > tol * s[0])))
    return [(u[:, r] * math.sqrt(s[r]), vt[r] * math.sqrt(s[r])) for r in range(keep)]
