"""The one face every runtime shows: `predict(batch) -> logits`.

Polygraphy-style: the base class owns the public `predict`, the input checks, batch
splitting, padding to a minimum batch and the context-manager lifecycle; a runtime
implements `_predict_impl` only (and `open`, which builds it from an artifact path).
Export's parity check and validate's metrics therefore never branch on the runtime,
and a number computed on PyTorch, onnxruntime, OpenVINO or TensorRT means the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from richkd_deploy.errors import ArtifactError


def split_batches(n: int, max_batch: int) -> list[slice]:
    """Slices covering range(n) in chunks of at most `max_batch` (engines have a
    profile maximum; runtimes split bigger batches instead of failing)."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    return [slice(i, min(i + max_batch, n)) for i in range(0, n, max_batch)]


class Runtime:
    """Base class: validates inputs, splits and pads batches, manages open/close."""

    name: str = "runtime"
    #: file suffixes this runtime runs (the first registered runtime claiming one is the default)
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: largest batch one call may take (a TensorRT profile's max); None = unlimited
    max_batch: int | None = None
    #: smallest batch (a TensorRT profile's min); smaller batches are zero-padded
    min_batch: int = 1
    #: (C, H, W) when the artifact pins it
    input_shape: tuple[int, int, int] | None = None
    #: number of output classes when known
    num_classes: int | None = None
    path: Path | None = None

    @classmethod
    def open(cls, path: Path, provider: str | None = None, **kwargs: Any) -> Runtime:  # pragma: no cover - abstract
        """Build this runtime for an artifact file (its sha256 is already checked)."""
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """What the runtime says about how it ran the artifact (e.g. OpenVINO's inference
        precision), recorded in validate's results; empty when there is nothing to say."""
        return {}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Logits `[N, K]` float32 for a float32 `[N, C, H, W]` batch of any size."""
        if self._closed:
            raise ArtifactError(f"{self.name} runtime is closed")
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"{self.name}.predict expects a numpy array, got {type(batch).__name__}")
        if batch.ndim != 4 or not np.issubdtype(batch.dtype, np.floating):
            raise ArtifactError(f"{self.name}: expected a float32 batch [N, C, H, W], got {batch.dtype} "
                                f"{list(batch.shape)}")
        if self.input_shape is not None and tuple(batch.shape[1:]) != tuple(self.input_shape):
            what = f"{Path(self.path).name} ({self.name})" if self.path is not None else self.name
            raise ArtifactError(f"{what}: images are {list(batch.shape[1:])} but the model takes "
                                f"{list(self.input_shape)}; check data.input_size, or use a model made for this data")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, self.num_classes or 0), dtype=np.float32)
        outs = [self._run(batch[sl]) for sl in split_batches(n, self.max_batch or n)]
        out = np.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]
        if out.ndim != 2 or out.shape[0] != n:
            raise ArtifactError(f"{self.name}: expected logits [N, K], got {list(out.shape)}")
        return np.asarray(out, dtype=np.float32)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        n = chunk.shape[0]
        if n < self.min_batch:
            pad = np.zeros((self.min_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
            return self._predict_impl(np.concatenate([chunk, pad]))[:n]
        return self._predict_impl(chunk)

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # lifecycle -----------------------------------------------------------------------
    _closed = False

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
