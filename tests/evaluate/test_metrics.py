"""Metrics on hand-computed tiny inputs, against torchmetrics, and on bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from richkd_deploy.evaluate import metrics

LN2 = math.log(2.0)


def _logits_from_probs(probs: list[list[float]]) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64))


# Four samples, two classes, confidences 0.93, 0.62, 0.77, 0.55 (no bin edges) on
# class 0 / 1 / 0 / 1; sample 1 is wrong.
PROBS = [[0.93, 0.07], [0.38, 0.62], [0.77, 0.23], [0.45, 0.55]]
LABELS = np.array([0, 0, 0, 1])


def test_softmax_is_stable_for_huge_and_float16_logits():
    z = np.array([[1e4, 1e4 - 1.0, -1e4]], dtype=np.float64)
    p = metrics.softmax(z)
    assert np.all(np.isfinite(p))
    assert p[0, 0] == pytest.approx(1 / (1 + math.exp(-1)))
    half = metrics.softmax(np.array([[60000.0, 59999.0]], dtype=np.float16))
    assert half.dtype == np.float64 and np.all(np.isfinite(half))


def test_top_k_accuracy_by_hand():
    z = np.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    y = np.array([0, 2, 0])
    assert metrics.top_k_accuracy(z, y, 1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(z, y, 2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(z, y, 3) == 1.0


def test_top_k_ties_go_to_the_lowest_index_like_numpy_argmax():
    # a tie for the top score is the lowest index's win, as on every deployment runtime
    assert metrics.top_k_accuracy(np.zeros((2, 4)), np.array([0, 3]), 1) == 0.5
    z = np.array([[1.0, 1.0, 0.0]])
    assert metrics.top_k_accuracy(z, np.array([1]), 1) == 0.0
    assert metrics.top_k_accuracy(z, np.array([0]), 1) == 1.0
    assert metrics.top_k_accuracy(z, np.array([1]), 2) == 1.0
    assert metrics.top_k_accuracy(z, np.array([2]), 2) == 0.0
    # [0, 2, 2, 2]: top-2 is classes 1 and 2, class 3 ties but is left out
    w = np.array([[0.0, 2.0, 2.0, 2.0]] * 3)
    assert metrics.top_k_accuracy(w, np.array([1, 2, 3]), 2) == pytest.approx(2 / 3)
    assert metrics.top_k_predictions(w, 2).tolist() == [[1, 2]] * 3


def test_top1_equals_numpy_argmax_on_quantized_logits():
    rng = np.random.default_rng(0)
    z = np.round(rng.normal(size=(2000, 10)) * 2) / 2  # coarse steps, like INT8 output logits: many ties
    y = rng.integers(0, 10, size=2000)
    assert (np.sort(z, axis=1)[:, -1] == np.sort(z, axis=1)[:, -2]).sum() > 50
    want = float(np.mean(z.argmax(axis=1) == y))
    assert metrics.top_k_accuracy(z, y, 1) == want
    assert metrics.summary(z, y)["top1"] == want
    assert (metrics.predictions(z) == z.argmax(axis=1)).all()
    assert (metrics.top_k_predictions(z, 5)[:, 0] == z.argmax(axis=1)).all()


def test_every_figure_of_tied_logits_comes_from_the_same_predictions():
    # [[1, 1, 0]] with label 1 is wrong: accuracy, bins, histogram, per-class and confidence agree
    z = np.array([[1.0, 1.0, 0.0], [0.0, 3.0, 3.0], [5.0, 0.0, 0.0]])
    y = np.array([1, 2, 0])
    top1 = metrics.top_k_accuracy(z, y, 1)
    assert top1 == pytest.approx(1 / 3)
    rel = metrics.reliability_diagram(z, y, n_bins=10)
    hits = sum(c * a for c, a in zip(rel["count"], rel["accuracy"], strict=True) if a is not None)
    assert hits == pytest.approx(1.0)
    hist = metrics.confidence_histogram(z, y, bins=10)
    assert sum(hist["correct"]) == 1 and sum(hist["wrong"]) == 2
    assert metrics.per_class_accuracy(z, y) == [1.0, 0.0, 0.0]
    conf = metrics.confidence_analysis(z, y, threshold=0.4)
    assert conf["confident_correct"] == 1 and conf["confident_wrong"] == 2
    assert metrics.agreement(z, np.array([[0.0, 1.0, 0.0], [0.0, 3.0, 3.0], [5.0, 0.0, 0.0]]))["top1_agreement"] \
        == pytest.approx(2 / 3)


def test_per_class_accuracy_leaves_absent_classes_empty():
    z = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 0.0, 0.0]])
    assert metrics.per_class_accuracy(z, np.array([0, 1, 1])) == [1.0, 0.5, None]


def test_nll_and_brier_by_hand():
    z = _logits_from_probs(PROBS)
    want_nll = -(math.log(0.93) + math.log(0.38) + math.log(0.77) + math.log(0.55)) / 4
    assert metrics.nll(z, LABELS) == pytest.approx(want_nll, abs=1e-12)
    # sum over classes of (p - onehot)^2 = 2 * (1 - p_label)^2 for two classes
    want_brier = np.mean([2 * 0.07**2, 2 * 0.62**2, 2 * 0.23**2, 2 * 0.45**2])
    assert metrics.brier(z, LABELS) == pytest.approx(want_brier, abs=1e-12)


def test_nll_of_uniform_prediction_is_log_k():
    assert metrics.nll(np.zeros((5, 2)), np.array([0, 1, 0, 1, 1])) == pytest.approx(LN2)


def test_ece_mce_by_hand():
    z = _logits_from_probs(PROBS)
    # 2 bins (0, .5], (.5, 1]: all four in the upper bin, mean confidence 0.7175, accuracy 0.75
    assert metrics.ece(z, LABELS, n_bins=2) == pytest.approx(0.0325, abs=1e-12)
    # 10 bins: one sample each in (.5,.6] right, (.6,.7] wrong, (.7,.8] right, (.9,1] right
    assert metrics.ece(z, LABELS, n_bins=10) == pytest.approx((0.45 + 0.62 + 0.23 + 0.07) / 4, abs=1e-12)
    assert metrics.mce(z, LABELS, n_bins=10) == pytest.approx(0.62, abs=1e-12)


def test_bins_are_closed_on_the_right():
    # confidence exactly 0.5 belongs to (0, .5], exactly 1.0 to the last bin
    z = np.array([[0.0, 0.0], [50.0, -50.0]])
    d = metrics.reliability_diagram(z, np.array([0, 0]), n_bins=2)
    assert d["count"] == [1, 1]


def test_adaptive_ece_by_hand():
    z = _logits_from_probs(PROBS)
    # sorted: 0.55 right, 0.62 wrong | 0.77 right, 0.93 right  (2 equal-mass bins)
    want = 0.5 * abs(0.5 - 0.585) + 0.5 * abs(1.0 - 0.85)
    assert metrics.adaptive_ece(z, LABELS, n_bins=2) == pytest.approx(want, abs=1e-12)
    # more bins than samples: one sample per bin
    want_single = np.mean([abs(1 - 0.55), abs(0 - 0.62), abs(1 - 0.77), abs(1 - 0.93)])
    assert metrics.adaptive_ece(z, LABELS, n_bins=15) == pytest.approx(want_single, abs=1e-12)


def test_reliability_diagram_lists_and_json():
    z = _logits_from_probs(PROBS)
    d = metrics.reliability_diagram(z, LABELS, n_bins=10)
    assert d["n_bins"] == 10 and d["n"] == 4
    assert d["lower"][0] == 0.0 and d["upper"][-1] == 1.0 and len(d["lower"]) == 10
    assert d["count"] == [0, 0, 0, 0, 0, 1, 1, 1, 0, 1]
    assert d["confidence"][6] == pytest.approx(0.62) and d["accuracy"][6] == 0.0
    assert d["gap"][6] == pytest.approx(-0.62)
    assert d["accuracy"][0] is None and d["confidence"][0] is None and d["gap"][0] is None
    assert d["ece"] == pytest.approx(metrics.ece(z, LABELS, n_bins=10))
    assert d["mce"] == pytest.approx(metrics.mce(z, LABELS, n_bins=10))
    json.dumps(d, allow_nan=False)


def test_confidence_analysis_by_hand():
    z = _logits_from_probs(PROBS)
    c = metrics.confidence_analysis(z, LABELS, threshold=0.6)
    # confident (>= 0.6): 0.93 right, 0.62 wrong, 0.77 right
    assert (c["confident"], c["confident_correct"], c["confident_wrong"]) == (3, 2, 1)
    assert c["confident_rate"] == 0.75 and c["confident_wrong_rate"] == 0.25 and c["confident_correct_rate"] == 0.5
    assert c["accuracy_when_confident"] == pytest.approx(2 / 3)
    assert c["mean_confidence_correct"] == pytest.approx((0.93 + 0.77 + 0.55) / 3)
    assert c["mean_confidence_wrong"] == pytest.approx(0.62)
    assert metrics.confidence_analysis(z, LABELS, threshold=0.62)["confident_wrong"] == 1  # >=, not >
    none = metrics.confidence_analysis(z, LABELS, threshold=0.99)
    assert none["confident"] == 0 and none["accuracy_when_confident"] is None
    all_right = metrics.confidence_analysis(z[[0, 2]], np.array([0, 0]), threshold=0.5)
    assert all_right["mean_confidence_wrong"] is None
    json.dumps(c, allow_nan=False)


def test_agreement_by_hand():
    a = _logits_from_probs([[0.5, 0.5], [0.9, 0.1]])
    b = _logits_from_probs([[0.25, 0.75], [0.9, 0.1]])
    r = metrics.agreement(a, b)
    assert r["top1_agreement"] == 0.5  # 0.5/0.5 ties go to class 0; 0.25/0.75 is class 1
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert r["mean_kl"] == pytest.approx(kl0 / 2, abs=1e-12)
    assert r["max_kl"] == pytest.approx(kl0, abs=1e-12)
    assert r["max_abs_prob_diff"] == pytest.approx(0.25)
    same = metrics.agreement(a, a + 7.0)  # a constant shift changes no probability
    assert same["top1_agreement"] == 1.0 and same["mean_kl"] == pytest.approx(0.0, abs=1e-15)


def test_agreement_needs_same_shape():
    with pytest.raises(ValueError, match="same shape"):
        metrics.agreement(np.zeros((2, 3)), np.zeros((2, 4)))


def test_temperature_roundtrip_and_validation():
    z = np.array([[2.0, 0.0]])
    np.testing.assert_allclose(metrics.apply_temperature(z, 2.0), [[1.0, 0.0]])
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            metrics.apply_temperature(z, bad)


@pytest.mark.parametrize("t0", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_known_temperature(t0):
    rng = np.random.default_rng(7)
    z = rng.normal(scale=3.0, size=(8000, 10))
    p = metrics.softmax(z / t0)
    labels = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    t = metrics.fit_temperature(z, labels)
    assert t == pytest.approx(t0, rel=0.05)
    assert metrics.nll(z / t, labels) <= metrics.nll(z / t0, labels) + 1e-9


def test_fit_temperature_edge_cases():
    assert metrics.fit_temperature(np.zeros((4, 3)), np.array([0, 1, 2, 0])) == 1.0
    separable = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    labels = np.array([0, 1] * 10)
    # NLL keeps falling as T -> 0 until it underflows to 0: any tiny T is a minimiser
    t = metrics.fit_temperature(separable, labels, bounds=(0.05, 20.0))
    assert 0.05 <= t < 0.2 and metrics.nll(separable / t, labels) < 1e-12
    with pytest.raises(ValueError):
        metrics.fit_temperature(separable, labels, bounds=(2.0, 1.0))


def test_summary_bundles_scalars():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 7))
    y = rng.integers(0, 7, 50)
    s = metrics.summary(z, y, n_bins=10, threshold=0.5)
    assert s["n"] == 50 and s["num_classes"] == 7 and s["n_bins"] == 10
    assert s["ece"] == pytest.approx(metrics.ece(z, y, 10))
    assert s["top5"] == pytest.approx(metrics.top_k_accuracy(z, y, 5))
    assert metrics.summary(z[:, :3], y % 3)["top5"] is None
    json.dumps(s, allow_nan=False)


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    z = torch.tensor(_logits_from_probs(PROBS), dtype=torch.float32)
    assert metrics.nll(z, torch.tensor(LABELS)) == pytest.approx(metrics.nll(_logits_from_probs(PROBS), LABELS), abs=1e-6)


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (np.zeros((3, 2)), np.zeros(4, dtype=int), "one label per row"),
        (np.zeros(3), np.zeros(3, dtype=int), "2-D"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), "at least one"),
        (np.array([[0.0, np.nan]]), np.array([0]), "NaN"),
        (np.array([[0.0, np.inf]]), np.array([0]), "NaN or infinite"),
        (np.zeros((2, 2)), np.array([0, 2]), "labels must lie"),
        (np.zeros((2, 2)), np.array([0, -1]), "labels must lie"),
        (np.zeros((2, 2)), np.array([0.5, 1.0]), "integers"),
        (np.array([["a", "b"]]), np.array([0]), "numeric"),
    ],
)
def test_bad_inputs_raise_value_error(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.nll(logits, labels)


def test_bad_bins_and_k_raise():
    z, y = np.zeros((2, 2)), np.array([0, 1])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_bins"):
            metrics.ece(z, y, n_bins=bad)
    with pytest.raises(ValueError, match="k must"):
        metrics.top_k_accuracy(z, y, k=0)
    with pytest.raises(ValueError, match="threshold"):
        metrics.confidence_analysis(z, y, threshold=1.5)


# ------------------------------------------------------------ torchmetrics


@pytest.mark.parametrize("seed, k, scale", [(0, 10, 2.0), (1, 100, 4.0), (2, 3, 0.5)])
def test_ece_and_mce_match_torchmetrics(seed, k, scale):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    rng = np.random.default_rng(seed)
    n = 3000
    z = rng.normal(scale=scale, size=(n, k)).astype(np.float32)
    y = np.where(rng.random(n) < 0.6, z.argmax(1), rng.integers(0, k, n))
    for norm, ours in (("l1", metrics.ece), ("max", metrics.mce)):
        metric = tm.MulticlassCalibrationError(num_classes=k, n_bins=15, norm=norm)
        want = float(metric(torch.from_numpy(z), torch.from_numpy(y)))
        assert ours(z, y, n_bins=15) == pytest.approx(want, abs=1e-6)


def test_binomial_interval_is_exact_clopper_pearson():
    # k = n: the lower bound solves p^n = alpha / 2
    r = metrics.binomial_interval(300, 300)
    assert r["high"] == 1.0 and r["low"] == pytest.approx(0.025 ** (1 / 300), rel=1e-9)
    r = metrics.binomial_interval(0, 50)
    assert r["low"] == 0.0 and r["high"] == pytest.approx(1 - 0.025 ** (1 / 50), rel=1e-9)
    # textbook value: 7 of 20, 95 % -> [0.1539, 0.5922]
    r = metrics.binomial_interval(7, 20)
    assert (round(r["low"], 4), round(r["high"], 4)) == (0.1539, 0.5922)
    assert "Clopper-Pearson" in r["method"]
    z = np.array([[1.0, 0.0]] * 9 + [[0.0, 1.0]])
    a = metrics.agreement(z, np.array([[1.0, 0.0]] * 10))
    assert a["top1_agreement"] == 0.9 and a["top1_agreement_interval"]["low"] < 0.9 < a["top1_agreement_interval"]["high"]


def test_top1_drop_interval_matches_a_plain_paired_bootstrap():
    rng = np.random.default_rng(1)
    n = 2000
    y = rng.integers(0, 5, n)
    ref = rng.normal(size=(n, 5))
    ref[np.arange(n), y] += 1.5
    cand = ref.copy()
    flip = rng.random(n) < 0.03
    cand[flip] = rng.normal(size=(int(flip.sum()), 5))
    r = metrics.top1_drop_interval(ref, cand, y)
    assert r == metrics.top1_drop_interval(ref, cand, y)  # fixed seed: reproducible
    d = (ref.argmax(1) == y).astype(int) - (cand.argmax(1) == y).astype(int)
    assert r["value"] == pytest.approx(d.mean())
    idx = np.random.default_rng(7).integers(0, n, size=(2000, n))
    lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    assert r["low"] == pytest.approx(lo, abs=0.002) and r["high"] == pytest.approx(hi, abs=0.002)
    assert r["low"] < r["value"] < r["high"] and "paired bootstrap" in r["method"]
    same = metrics.top1_drop_interval(ref, ref, y)
    assert same["low"] == same["high"] == same["value"] == 0.0
