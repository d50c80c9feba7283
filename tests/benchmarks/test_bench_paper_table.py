"""benchmarks/paper_table.py needs CIFAR-100, the mdistiller teacher and CLIP weights for its real
run; this runs it on the smoke recipe with tiny settings so it cannot rot, and pins its refusal to
report a RichKD row trained with random CLIP weights as a result."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--recipe", "smoke", "--quiet", "-o", "data.train_limit=120", "-o", "data.test_limit=60",
        "-o", "data.holdout_fraction=0.25"]


def _module():
    spec = importlib.util.spec_from_file_location("paper_table", REPO / "benchmarks" / "paper_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_smoke_table_every_method_with_random_clip_as_labelled_control(tmp_path, capsys):
    pt = _module()
    out_json = tmp_path / "table.json"
    assert pt.main([*TINY, "--seeds", "0", "1", "--negative-control", "--out", str(tmp_path / "runs"),
                    "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    table = text[text.index("| method |"):]
    doc = json.loads(out_json.read_text())
    runs = doc["runs"]
    assert sorted({(r["method"], r["seed"]) for r in runs}) == sorted(
        (m, s) for m in pt.METHODS for s in (0, 1))
    for r in runs:
        assert 0 <= r["top1"] <= 1 and 0 <= r["ece"] <= 1 and 0 <= r["ece_ts"] <= 1 and r["temperature"] > 0
        assert r["confident_correct"] + r["confident_wrong"] <= r["n_test"] == 60
        assert r["clip_random"] == r["method"].startswith("richkd")
    for m in pt.METHODS.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| {m.label}"))
        assert ("NEGATIVE CONTROL" in row) == m.richkd
        assert " ± " in row  # mean ± std over the two seeds
    assert doc["teacher_top1"] is not None and "| teacher resnet8 |" in table
    assert "holdout" in doc["calibration_split"]
    assert "n/a" in table  # not the published setting: the published column is not filled in


def test_random_clip_richkd_is_refused_without_the_flag(tmp_path, capsys):
    pt = _module()
    assert pt.main([*TINY, "--seeds", "0", "--methods", "vanilla", "richkd_lf", "--out", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| RichKD L+F"))
    assert "not run: CLIP weights are random" in row and "±" not in row
    assert not (tmp_path / "runs" / "richkd_lf-s0").exists()
    assert "| vanilla (student alone) |" in text


def test_temperature_cross_fitted_on_the_test_set_without_a_holdout():
    pt = _module()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    pred = np.where(rng.random(400) < 0.7, labels, rng.integers(0, 5, 400))
    logits = rng.normal(size=(400, 5)) + 8 * np.eye(5)[pred]  # ~100% confident, ~75% right: T > 1 helps
    ece_ts, t, split = pt.temperature_scaled_ece(logits, labels, None)
    assert split.startswith("test, 2-fold") and t > 1
    assert ece_ts < pt.metrics.ece(logits, labels)
    hold = (logits[:200], labels[:200])
    _, t_h, split_h = pt.temperature_scaled_ece(logits[200:], labels[200:], hold)
    assert split_h == "holdout" and t_h == pytest.approx(pt.metrics.fit_temperature(*hold))
