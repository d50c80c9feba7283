"""95% intervals for the gates' figures: exact binomial for a proportion, paired
bootstrap for a difference of two models on the same images.

Pure numpy/scipy on counts and per-image differences, so `metrics` (which turns
logits into those) and the gates share one definition of each interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INTERVAL_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def binomial_interval(k: int, n: int, level: float = INTERVAL_LEVEL) -> dict[str, Any]:
    """Exact (Clopper-Pearson) interval for a proportion k/n, e.g. the top-1 agreement.

    Agreement is a count of matching predictions over independent test images, a
    binomial proportion; the exact interval never undercovers, even at 100 %
    agreement where the normal approximation collapses to a point.
    """
    from scipy.stats import beta

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = 1.0 - float(level)
    low = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return {"low": low, "high": high, "level": float(level), "method": "exact binomial (Clopper-Pearson)"}


def paired_bootstrap(d: np.ndarray, level: float = INTERVAL_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Mean of per-image differences `d` (values -1, 0, +1) with a paired-bootstrap
    percentile interval.

    Paired: each resample draws images, not two independent sets, so the strong
    correlation between a model and its exported copy is kept (the interval of a
    drop between two 90 % models that agree on 99 % of images is a fraction of the
    unpaired one). With only three values, a resample of n images is a multinomial
    draw of their counts: exactly the bootstrap distribution, with a fixed seed.
    """
    d = np.asarray(d, dtype=np.int64)
    n = len(d)
    p = np.array([np.sum(d == -1), np.sum(d == 0), np.sum(d == 1)], dtype=np.float64) / n
    counts = np.random.default_rng(seed).multinomial(n, p, size=int(resamples))
    boot = (counts[:, 2] - counts[:, 0]) / n
    a = 1.0 - float(level)
    low, high = np.quantile(boot, [a / 2, 1 - a / 2])
    return {"value": float(d.mean()), "low": float(low), "high": float(high), "level": float(level),
            "method": f"paired bootstrap, {int(resamples)} resamples, seed {seed}, percentile"}
