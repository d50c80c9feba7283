"""Reader for the IDX format (MNIST, Fashion-MNIST), plain or gzipped.

Written here rather than borrowed from torchvision so a truncated or mislabelled
download fails with a message that says which file is wrong and what to do, instead
of a reshape error deep in numpy.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from richkd_deploy.errors import DataError

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path, fix: str) -> bytes:
    """File contents, gunzipped when the file is gzip (detected by content, not name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; {fix}") from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is a damaged or truncated gzip file ({e}); {fix}") from e


def read_idx(path: str | Path, expect_ndim: int | None = None, fix: str = "download the file again") -> np.ndarray:
    """The array stored in an IDX file, as native-endian numpy.

    The header is checked against the file size, so a truncated download raises
    DataError (whose message ends with `fix`) instead of returning a short array.
    """
    path = Path(path)
    data = _read_bytes(path, fix)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}); {fix}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: expected an IDX file with {expect_ndim} dimensions, found {ndim}; {fix}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (header incomplete); {fix}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{path} is {what} ({len(data)} bytes, header says {expected}); {fix}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)  # native order, writable


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write `array` as IDX (gzipped when `compress`, or when the name ends in .gz).
    Used by tests and to export small datasets in the MNIST layout."""
    path = Path(path)
    codes = {v.newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    dtype = np.dtype(array.dtype).newbyteorder("=")
    if dtype not in codes:
        raise ValueError(f"write_idx: unsupported dtype {array.dtype}")
    header = bytes([0, 0, codes[dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array).astype(_IDX_DTYPES[codes[dtype]]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=1)
    path.write_bytes(payload)
    return path
