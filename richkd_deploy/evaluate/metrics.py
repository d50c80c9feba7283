"""Accuracy and calibration metrics on raw logits.

Pure functions of numpy arrays: ``logits`` is float [N, K] (any float dtype;
torch CPU tensors are accepted too), ``labels`` is integer [N] in [0, K).
Probabilities are computed with a max-shifted softmax in float64, so huge or
float16 logits neither overflow nor lose the small probabilities that NLL and
KL need. Accuracies, rates and calibration errors are fractions in [0, 1].

Bad arguments (shape mismatch, NaN/inf logits, labels out of range, empty
input, bad bin counts) are programming errors of the caller and raise
ValueError.

Predictions: a sample's prediction is the arg-max of its logits with ties going
to the lowest class index, exactly as ``numpy.argmax`` and every deployment
runtime compute it (``predictions``); top-k is a stable sort by descending logit,
ties again to the lower index (``top_k_predictions``), so the top-1 of top-k is the
prediction. Accuracy, per-class accuracy, calibration bins, the confidence
analysis and the confidence histogram are all computed from these predictions, so
one artifact's figures cannot contradict each other. (Counting a tie for the top
score as a hit, as this module once did, credited a quantized model with 190
right answers on the demo that no deployment would give.)

Binning convention (ECE, MCE, reliability diagram): ``n_bins`` equal-width
bins over the top-1 confidence, bin m = ((m-1)/M, m/M] as in Guo et al. 2017;
every confidence is at least 1/K > 0, so the bins cover all samples. This
agrees with torchmetrics' ``MulticlassCalibrationError`` except for
confidences lying exactly on an inner edge (it uses [lo, hi)) and for
confidences that round to exactly 1.0 in its float32 softmax (it gives those
a bin of their own).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from richkd_deploy.evaluate.inputs import check as _check
from richkd_deploy.evaluate.inputs import check_bins as _check_bins
from richkd_deploy.evaluate.inputs import check_logits as _check_logits
from richkd_deploy.evaluate.intervals import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    INTERVAL_LEVEL,
    binomial_interval,
    paired_bootstrap,
)

_DEFAULT_THRESHOLD = 0.9


# ------------------------------------------------------------ probabilities


def log_softmax(logits: Any) -> np.ndarray:
    """Row-wise log-softmax in float64 (max-shifted, so it never overflows)."""
    z = _check_logits(logits)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax in float64."""
    return np.exp(log_softmax(logits))


# -------------------------------------------------------------- predictions


def predictions(logits: Any) -> np.ndarray:
    """The predicted class of every row: arg-max of the logits, ties to the lowest index.

    Taken on the logits themselves (not on rounded probabilities), so it is what
    ``numpy.argmax`` and a deployment runtime return for the same numbers.
    """
    return _check_logits(logits).argmax(axis=1)


def top_k_predictions(logits: Any, k: int) -> np.ndarray:
    """[N, k] class indices by descending logit, ties to the lower index (a stable sort);
    column 0 equals `predictions`. k larger than K is clipped to K."""
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    z = _check_logits(logits)
    return np.argsort(-z, axis=1, kind="stable")[:, : min(int(k), z.shape[1])]


def _top1(z: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (softmax probability of the prediction) and correctness of the prediction."""
    pred = z.argmax(axis=1)
    return softmax(z)[np.arange(len(pred)), pred], (pred == labels)


# ---------------------------------------------------------------- accuracy


def top_k_accuracy(logits: Any, labels: Any, k: int = 1) -> float:
    """Fraction of samples whose label is among the k top predictions (`top_k_predictions`).

    A tie is not a hit for free: with logits [1, 1, 0] the prediction is class 0,
    so label 1 is wrong at top-1 (right at top-2), as on any deployment.
    """
    z, y = _check(logits, labels)
    top = top_k_predictions(z, k)
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def per_class_accuracy(logits: Any, labels: Any) -> list[float | None]:
    """Top-1 accuracy within each true class (index = class), None for a class with no sample."""
    z, y = _check(logits, labels)
    correct = z.argmax(axis=1) == y
    n = np.bincount(y, minlength=z.shape[1])
    hits = np.bincount(y, weights=correct.astype(np.float64), minlength=z.shape[1])
    return [float(h / c) if c else None for h, c in zip(hits, n, strict=True)]


def confidence_histogram(logits: Any, labels: Any, bins: int = 20) -> dict[str, list]:
    """Counts of right and wrong predictions per equal-width confidence bin ([lo, hi), last closed)."""
    z, y = _check(logits, labels)
    conf, correct = _top1(z, y)
    edges = np.linspace(0.0, 1.0, _check_bins(bins) + 1)
    return {"edges": edges.tolist(), "correct": np.histogram(conf[correct], edges)[0].tolist(),
            "wrong": np.histogram(conf[~correct], edges)[0].tolist()}


def nll(logits: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the labels (natural log)."""
    z, y = _check(logits, labels)
    return float(-np.mean(log_softmax(z)[np.arange(len(y)), y]))


def brier(logits: Any, labels: Any) -> float:
    """Mean over samples of the squared distance between softmax and one-hot (range [0, 2])."""
    z, y = _check(logits, labels)
    p = softmax(z)
    p[np.arange(len(y)), y] -= 1.0
    return float(np.mean(np.sum(p * p, axis=1)))


# ------------------------------------------------------------- calibration


def _equal_width_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index m-1 for bin ((m-1)/M, m/M]."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, conf, side="left") - 1
    return np.clip(idx, 0, n_bins - 1)


def _bin_stats(conf: np.ndarray, correct: np.ndarray, idx: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / np.maximum(counts, 1), np.nan)
        acc = np.where(counts > 0, acc_sum / np.maximum(counts, 1), np.nan)
    return counts, mean_conf, acc


def _calibration(logits: Any, labels: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y = _check(logits, labels)
    n_bins = _check_bins(n_bins)
    conf, correct = _top1(z, y)
    counts, mean_conf, acc = _bin_stats(conf, correct, _equal_width_bins(conf, n_bins), n_bins)
    return counts, mean_conf, acc


def ece(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error: sum over bins of (bin size / N) * |accuracy - confidence|."""
    counts, mean_conf, acc = _calibration(logits, labels, n_bins)
    gaps = np.nan_to_num(np.abs(acc - mean_conf))
    return float(np.sum(counts / counts.sum() * gaps))


def mce(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest |accuracy - confidence| over non-empty bins."""
    _, mean_conf, acc = _calibration(logits, labels, n_bins)
    return float(np.nanmax(np.abs(acc - mean_conf)))


def adaptive_ece(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE over equal-mass bins: samples sorted by confidence, split into n_bins
    groups whose sizes differ by at most one (fewer groups when N < n_bins)."""
    z, y = _check(logits, labels)
    n_bins = _check_bins(n_bins)
    conf, correct = _top1(z, y)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for group in np.array_split(order, min(n_bins, len(order))):
        total += len(group) * abs(correct[group].mean() - conf[group].mean())
    return float(total / len(order))


def reliability_diagram(logits: Any, labels: Any, n_bins: int = 15) -> dict[str, Any]:
    """Per-bin data for a reliability diagram, plus ECE and MCE.

    Returns parallel lists, one entry per equal-width bin: ``lower``, ``upper``
    (edges), ``count``, ``confidence`` (mean top-1 probability), ``accuracy``
    and ``gap`` (accuracy - confidence), the last three None for empty bins
    (JSON-friendly); and the scalars ``n_bins``, ``n``, ``ece``, ``mce``.
    """
    counts, mean_conf, acc = _calibration(logits, labels, n_bins)
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    filled = counts > 0

    def listed(values: np.ndarray) -> list[float | None]:
        return [float(v) if f else None for v, f in zip(values, filled, strict=True)]

    gaps = acc - mean_conf
    return {
        "n_bins": len(counts),
        "n": int(counts.sum()),
        "ece": float(np.sum(counts / counts.sum() * np.nan_to_num(np.abs(gaps)))),
        "mce": float(np.nanmax(np.abs(gaps))),
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": [int(c) for c in counts],
        "confidence": listed(mean_conf),
        "accuracy": listed(acc),
        "gap": listed(gaps),
    }


def confidence_analysis(logits: Any, labels: Any, threshold: float = _DEFAULT_THRESHOLD) -> dict[str, Any]:
    """How often the model is confident (top-1 probability >= threshold), and right or wrong.

    Rates are relative to all N samples. Also reports the mean confidence of
    the correct and of the wrong predictions (None when there are none), and
    the accuracy among confident predictions (None when there are none).
    """
    z, y = _check(logits, labels)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    conf, correct = _top1(z, y)
    confident = conf >= float(threshold)
    n = len(y)
    cc = int(np.sum(confident & correct))
    cw = int(np.sum(confident & ~correct))

    def mean_or_none(values: np.ndarray) -> float | None:
        return float(values.mean()) if values.size else None

    return {
        "threshold": float(threshold),
        "n": n,
        "confident": cc + cw,
        "confident_rate": (cc + cw) / n,
        "confident_correct": cc,
        "confident_correct_rate": cc / n,
        "confident_wrong": cw,
        "confident_wrong_rate": cw / n,
        "accuracy_when_confident": cc / (cc + cw) if cc + cw else None,
        "mean_confidence_correct": mean_or_none(conf[correct]),
        "mean_confidence_wrong": mean_or_none(conf[~correct]),
    }


def agreement(logits_ref: Any, logits_model: Any) -> dict[str, float]:
    """How closely a model (e.g. an exported artifact) reproduces a reference.

    `logits_ref` is the reference (e.g. the PyTorch model), `logits_model`
    the candidate (e.g. ONNX/TensorRT). Returns ``top1_agreement`` (fraction
    of samples with the same prediction) with its exact 95% interval
    ``top1_agreement_interval`` (`binomial_interval`), ``mean_kl`` and ``max_kl`` over samples
    of KL(p_ref || p_model) in nats (the information lost when the candidate's
    distribution stands in for the reference's; 0 for identical logits) and
    ``max_abs_prob_diff``, the largest absolute difference of any probability.
    """
    a = _check_logits(logits_ref, "logits_ref")
    b = _check_logits(logits_model, "logits_model")
    if a.shape != b.shape:
        raise ValueError(f"logits_ref {a.shape} and logits_model {b.shape} must have the same shape")
    log_p, log_q = log_softmax(a), log_softmax(b)
    p = np.exp(log_p)
    kl = np.sum(p * (log_p - log_q), axis=1)
    kl = np.maximum(kl, 0.0)  # rounding can make a zero KL slightly negative
    same = predictions(a) == predictions(b)
    return {
        "top1_agreement": float(np.mean(same)),
        "top1_agreement_interval": binomial_interval(int(same.sum()), len(same)),
        "mean_kl": float(kl.mean()),
        "max_kl": float(kl.max()),
        "max_abs_prob_diff": float(np.max(np.abs(p - np.exp(log_q)))),
    }


# ------------------------------------------------------------- uncertainty

def top1_drop_interval(ref_logits: Any, logits: Any, labels: Any, level: float = INTERVAL_LEVEL,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Top-1 drop of `logits` against `ref_logits` (reference minus candidate) on the
    same images, with a paired-bootstrap percentile interval (`intervals.paired_bootstrap`)."""
    z_ref, y = _check(ref_logits, labels)
    z, _ = _check(logits, labels)
    if z.shape != z_ref.shape:
        raise ValueError(f"ref_logits {z_ref.shape} and logits {z.shape} must have the same shape")
    d = (z_ref.argmax(axis=1) == y).astype(np.int64) - (z.argmax(axis=1) == y).astype(np.int64)
    return paired_bootstrap(d, level, resamples, seed)


# ------------------------------------------------------ temperature scaling


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Logits divided by the temperature (float64); T > 1 softens, T < 1 sharpens."""
    t = float(temperature)
    if not (t > 0.0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return _check_logits(logits) / t


def fit_temperature(logits: Any, labels: Any, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """The temperature T > 0 minimising NLL(logits / T) on held-out data (Guo et al.).

    NLL is convex in 1/T, so a bounded scalar search over log T finds the
    global minimum. The result is clipped to `bounds`: separable data (all
    predictions right with margin) drives T towards 0 and returns the lower
    bound; constant logits carry no information and return 1.0.
    """
    from scipy.optimize import minimize_scalar

    z, y = _check(logits, labels)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0.0 < lo < hi or not math.isfinite(hi):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}")
    z = z - z.max(axis=1, keepdims=True)
    if np.all(z == 0.0):
        return 1.0
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        s = z * math.exp(-log_t)
        m = s.max(axis=1)
        lse = m + np.log(np.exp(s - m[:, None]).sum(axis=1))
        return float(np.mean(lse - s[rows, y]))

    res = minimize_scalar(loss, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-7})
    best = float(res.x)
    # the bounded search never evaluates the end points themselves
    for edge in (math.log(lo), math.log(hi)):
        if loss(edge) < loss(best):
            best = edge
    return float(math.exp(best))


# ----------------------------------------------------------------- summary


def summary(logits: Any, labels: Any, n_bins: int = 15, threshold: float = _DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The scalar metrics in one dict (JSON-serialisable).

    Keys: n, num_classes, top1, top5 (None when K < 5), nll, brier, ece, mce,
    adaptive_ece, confident_wrong_rate, confident_correct_rate, threshold,
    n_bins.
    """
    z, y = _check(logits, labels)
    conf = confidence_analysis(z, y, threshold)
    return {
        "n": int(z.shape[0]),
        "num_classes": int(z.shape[1]),
        "top1": top_k_accuracy(z, y, 1),
        "top5": top_k_accuracy(z, y, 5) if z.shape[1] >= 5 else None,
        "nll": nll(z, y),
        "brier": brier(z, y),
        "ece": ece(z, y, n_bins),
        "mce": mce(z, y, n_bins),
        "adaptive_ece": adaptive_ece(z, y, n_bins),
        "confident_correct_rate": conf["confident_correct_rate"],
        "confident_wrong_rate": conf["confident_wrong_rate"],
        "threshold": float(threshold),
        "n_bins": _check_bins(n_bins),
    }
