"""Does the exported artifact compute what the PyTorch model computes?

Parity is measured on real test images through the eval transform (random inputs
hide problems that only show on the real input distribution, e.g. saturated
activations) and reported as the two numbers a user can judge: the largest absolute
logit difference and the fraction of images whose top-1 class agrees. Both sides
are `richkd_deploy.runtime` runtimes (their `predict`), the same ones validate uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from richkd_deploy.errors import ArtifactError
from richkd_deploy.runtime.predictions import predictions

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    n: int
    atol: float | None = None
    min_agreement: float | None = None

    @property
    def passed(self) -> bool:
        ok_diff = self.atol is None or self.max_abs_diff <= self.atol
        ok_agree = self.min_agreement is None or self.top1_agreement >= self.min_agreement
        return ok_diff and ok_agree

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


class _Accumulator:
    def __init__(self) -> None:
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.count = 0
        self.agree = 0
        self.n = 0

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        test = np.asarray(test, dtype=np.float64)
        if ref.shape != test.shape:
            raise ArtifactError(f"artifact output shape {test.shape} differs from PyTorch's {ref.shape}; re-export")
        diff = np.abs(ref - test)
        if not np.all(np.isfinite(test)):
            self.max_abs = float("inf")
        else:
            self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.sum_abs += float(np.nan_to_num(diff, posinf=0.0).sum())
        self.count += diff.size
        self.agree += int((predictions(ref) == predictions(test)).sum())
        self.n += ref.shape[0]


def measure(reference: Predictor, candidate: Predictor, batches: Iterable[np.ndarray],
            atol: float | None = None, min_agreement: float | None = None) -> ParityResult:
    acc = _Accumulator()
    for batch in batches:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        acc.add(reference(batch), candidate(batch))
    if acc.n == 0:
        raise ArtifactError("no images to check parity on: the test set is empty; check data.test_limit")
    return ParityResult(acc.max_abs, acc.sum_abs / max(acc.count, 1), acc.agree / acc.n, acc.n, atol, min_agreement)


def check_parity(reference: Predictor, candidate: Predictor, batches: Iterable[np.ndarray], atol: float,
                 min_agreement: float, what: str = "model.onnx") -> ParityResult:
    """Measure, then raise ArtifactError with both numbers when outside tolerance."""
    result = measure(reference, candidate, batches, atol, min_agreement)
    if not result.passed:
        raise ArtifactError(
            f"{what} does not match PyTorch on {result.n} test images: max |logit diff| {result.max_abs_diff:.3g} "
            f"(allowed {atol:g}), top-1 agreement {result.top1_agreement:.4f} (required {min_agreement:g}); "
            "if the difference is numerical noise, raise export.parity_atol in the recipe, otherwise report a bug")
    return result
