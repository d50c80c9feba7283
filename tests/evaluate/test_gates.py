"""Ship/no-ship gates on hand-built rows: boundaries, NaN, pending and missing inputs.

The gates are the last line of defence before a model ships, so most of these tests
try to make a bad or unmeasured artifact pass and check that it cannot.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from richkd_deploy.evaluate.gates import GATES, evaluate_gates, exit_code, summarize, verdict
from richkd_deploy.recipe import GatesConfig

ALL_GATES = GatesConfig(
    max_top1_drop=0.01,
    min_agreement=0.97,
    max_ece=0.05,
    max_ece_increase=0.02,
    min_corruption_accuracy=0.40,
    max_corruption_drop=0.03,
    max_class_top1_drop=0.05,
)
ONLY = {g.name: GatesConfig(**{h.name: (getattr(ALL_GATES, h.name) if h.name == g.name else None) for h in GATES})
        for g in GATES}


def _corr(mean: float, names: tuple[str, ...] = ("gaussian_noise", "fog"), sev: tuple[int, ...] = (1, 3, 5)) -> dict:
    return {"accuracy": {c: {str(s): mean for s in sev} for c in names}, "mean_accuracy": mean}


def _row(name: str, role: str = "artifact", *, top1: Any = 0.95, ece: Any = 0.03, agree: Any = 0.99,
         corr: Any = 0.60, status: str = "ok", reason: str | None = None) -> dict:
    """A results row with just the fields the gates read (plus realistic neighbours)."""
    if status == "pending":
        return {"name": name, "role": role, "file": name, "backend": "tensorrt", "precision": "fp16",
                "status": "pending", "reason": reason, "clean": None, "agreement": None,
                "calibration": None, "corruptions": None}
    return {
        "name": name, "role": role, "file": name, "backend": "onnxruntime-cpu", "precision": "fp32",
        "status": status, "reason": reason,
        "clean": {"top1": top1, "top5": 0.99, "nll": 0.2, "brier": 0.08, "ece": ece, "mce": 0.1, "adaptive_ece": ece,
                  "per_class_top1": [0.9, 0.95, 1.0]},
        "agreement": {"student": None if role == "student" else {"top1_agreement": agree, "mean_kl": 0.001},
                      "teacher": {"top1_agreement": 0.9, "mean_kl": 0.3}},
        "calibration": {"temperature": 1.2, "ece_before": ece, "ece_after": 0.01, "nll_before": 0.2, "nll_after": 0.18},
        "corruptions": None if corr is None else _corr(corr),
    }


def _student(**kw: Any) -> dict:
    return _row("torch-fp32", "student", **kw)


def _by(results: list[dict], gate: str, artifact: str = "model.onnx") -> dict:
    [r] = [r for r in results if r["gate"] == gate and r["artifact"] == artifact]
    return r


def _one(gate: str, artifact: dict, student: dict | None = None) -> dict:
    rows = ([student] if student is not None else [_student()]) + [artifact]
    [r] = evaluate_gates(rows, ONLY[gate])
    return r


# --------------------------------------------------------------------------- pass / fail


def test_good_artifact_passes_every_gate_and_result_shape() -> None:
    rows = [_student(), _row("teacher", "teacher", top1=0.97), _row("model.onnx")]
    results = evaluate_gates(rows, ALL_GATES)
    assert [r["gate"] for r in results] == [g.name for g in GATES]
    assert {r["status"] for r in results} == {"pass"}
    for r in results:
        assert set(r) == {"gate", "artifact", "value", "bound", "status", "message", "interval", "noise"}
        assert r["artifact"] == "model.onnx"
        assert isinstance(r["value"], float) and isinstance(r["bound"], float)
    json.dumps(results, allow_nan=False)  # strict JSON for results.json
    assert exit_code(results) == 0
    assert verdict(results) == "pass"


def test_values_are_the_documented_differences() -> None:
    rows = [_student(top1=0.90, ece=0.02, corr=0.60), _row("model.onnx", top1=0.88, ece=0.05, agree=0.98, corr=0.55)]
    res = evaluate_gates(rows, ALL_GATES)
    assert _by(res, "max_top1_drop")["value"] == pytest.approx(0.02)
    assert _by(res, "min_agreement")["value"] == pytest.approx(0.98)
    assert _by(res, "max_ece")["value"] == pytest.approx(0.05)
    assert _by(res, "max_ece_increase")["value"] == pytest.approx(0.03)
    assert _by(res, "min_corruption_accuracy")["value"] == pytest.approx(0.55)
    assert _by(res, "max_corruption_drop")["value"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("gate", "student_kw", "art_on", "art_off"),
    [
        # 0.95 - 0.94 == 0.010000000000000009 in floats: still exactly on the bound.
        ("max_top1_drop", {"top1": 0.95}, {"top1": 0.94}, {"top1": 0.9399}),
        ("min_agreement", {}, {"agree": 0.97}, {"agree": 0.9699}),
        ("max_ece", {}, {"ece": 0.05}, {"ece": 0.0501}),
        ("max_ece_increase", {"ece": 0.03}, {"ece": 0.05}, {"ece": 0.0501}),
        ("min_corruption_accuracy", {}, {"corr": 0.40}, {"corr": 0.3999}),
        ("max_corruption_drop", {"corr": 0.63}, {"corr": 0.60}, {"corr": 0.5999}),
    ],
)
def test_bounds_are_inclusive_and_just_beyond_fails(gate: str, student_kw: dict, art_on: dict, art_off: dict) -> None:
    on = _one(gate, _row("model.onnx", **art_on), _student(**student_kw))
    assert on["status"] == "pass", on
    off = _one(gate, _row("model.onnx", **art_off), _student(**student_kw))
    assert off["status"] == "fail", off
    assert exit_code([on, off]) == 1


def test_artifact_better_than_student_passes_relative_gates() -> None:
    res = evaluate_gates([_student(top1=0.90, ece=0.05, corr=0.5), _row("model.onnx", top1=0.92, ece=0.01, corr=0.6)],
                         ALL_GATES)
    assert _by(res, "max_top1_drop")["value"] < 0
    assert all(r["status"] == "pass" for r in res)


def test_disabled_gates_are_not_reported() -> None:
    res = evaluate_gates([_student(), _row("model.onnx"), _row("model.int8.onnx")],
                         GatesConfig(max_top1_drop=0.01, min_agreement=None, max_ece=None, max_ece_increase=None,
                                     min_corruption_accuracy=None, max_corruption_drop=None,
                                     max_class_top1_drop=None))
    assert [(r["artifact"], r["gate"]) for r in res] == [("model.onnx", "max_top1_drop"), ("model.int8.onnx", "max_top1_drop")]


def test_only_artifact_rows_are_gated() -> None:
    res = evaluate_gates([_student(), _row("teacher", "teacher", top1=0.5), _row("model.onnx")], ALL_GATES)
    assert {r["artifact"] for r in res} == {"model.onnx"}


# --------------------------------------------------------------------------- cannot be fooled


@pytest.mark.parametrize("gate", [g.name for g in GATES])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1.5, -0.1, True, "0.99"])
def test_invalid_artifact_value_fails(gate: str, bad: Any) -> None:
    key = {"max_top1_drop": "top1", "min_agreement": "agree", "max_ece": "ece", "max_ece_increase": "ece",
           "min_corruption_accuracy": "corr", "max_corruption_drop": "corr", "max_class_top1_drop": "classes"}[gate]
    art = _row("model.onnx", **({} if key == "classes" else {key: bad}))
    if key == "corr":
        art["corruptions"]["mean_accuracy"] = bad
    if key == "classes":
        art["clean"]["per_class_top1"] = [bad, 0.95, 1.0]
    r = _one(gate, art)
    assert r["status"] == "fail", r
    assert r["value"] is None  # never NaN in results.json
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("gate", ["max_top1_drop", "max_ece_increase", "max_corruption_drop"])
def test_nan_in_student_reference_fails(gate: str) -> None:
    stu = _student(top1=math.nan, ece=math.nan, corr=0.6)
    stu["corruptions"]["mean_accuracy"] = math.nan
    r = _one(gate, _row("model.onnx"), stu)
    assert r["status"] == "fail"
    assert "NaN" in r["message"]


def test_nan_bound_fails() -> None:
    nan_bound = GatesConfig(max_top1_drop=None, min_agreement=None, max_ece=math.nan, max_ece_increase=None,
                            min_corruption_accuracy=None, max_corruption_drop=None, max_class_top1_drop=None)
    [r] = evaluate_gates([_student(), _row("model.onnx")], nan_bound)
    assert r["status"] == "fail"


def test_errored_artifact_fails() -> None:
    res = evaluate_gates([_student(), _row("model.onnx", status="error", reason="onnxruntime crashed")], ALL_GATES)
    assert {r["status"] for r in res} == {"fail"}
    assert "onnxruntime crashed" in res[0]["message"]


def test_different_corruption_sets_fail_the_drop_gate() -> None:
    stu = _student(corr=0.6)
    art = _row("model.onnx", corr=0.6)
    art["corruptions"] = _corr(0.6, names=("fog",))
    r = _one("max_corruption_drop", art, stu)
    assert r["status"] == "fail" and "different corruption" in r["message"]


def test_no_artifact_rows_fails() -> None:
    res = evaluate_gates([_student()], ALL_GATES)
    assert exit_code(res) == 1 and res[0]["status"] == "fail"


# --------------------------------------------------------------------------- pending


def test_pending_row_makes_every_gate_pending_never_pass() -> None:
    rows = [_student(), _row("model.onnx"), _row("model.fp16.engine", status="pending", reason="no TensorRT here")]
    res = evaluate_gates(rows, ALL_GATES)
    eng = [r for r in res if r["artifact"] == "model.fp16.engine"]
    assert len(eng) == len(GATES)
    assert all(r["status"] == "pending" and r["value"] is None and r["message"] == "no TensorRT here" for r in eng)
    assert exit_code(res) == 0
    assert verdict(res) == "pending"
    text = summarize(res)
    assert "PENDING model.fp16.engine: no TensorRT here" in text
    assert "PASS" in text and "pending" in text.splitlines()[-1]


def test_pending_row_and_a_failure_still_fails() -> None:
    rows = [_student(), _row("model.int8.onnx", top1=0.5), _row("model.fp16.engine", status="pending", reason="no GPU")]
    res = evaluate_gates(rows, ALL_GATES)
    assert exit_code(res) == 1 and verdict(res) == "fail"
    assert "FAIL" in summarize(res)


def test_missing_corruptions_are_pending_with_reason() -> None:
    rows = [_student(corr=None), _row("model.onnx", corr=None)]
    res = evaluate_gates(rows, ALL_GATES)
    for gate in ("min_corruption_accuracy", "max_corruption_drop"):
        r = _by(res, gate)
        assert r["status"] == "pending" and "corruption" in r["message"] and r["value"] is None
    assert _by(res, "max_top1_drop")["status"] == "pass"
    assert exit_code(res) == 0
    assert "PENDING" in summarize(res)


def test_missing_student_corruptions_only_pends_the_drop_gate() -> None:
    res = evaluate_gates([_student(corr=None), _row("model.onnx")], ALL_GATES)
    assert _by(res, "min_corruption_accuracy")["status"] == "pass"
    assert _by(res, "max_corruption_drop")["status"] == "pending"


def test_missing_agreement_is_pending() -> None:
    art = _row("model.onnx")
    art["agreement"] = {"student": None, "teacher": None}
    assert _one("min_agreement", art)["status"] == "pending"
    del art["agreement"]
    assert _one("min_agreement", art)["status"] == "pending"


@pytest.mark.parametrize("student", [None, "pending"])
def test_no_usable_student_pends_relative_gates(student: str | None) -> None:
    rows = [_row("model.onnx")]
    if student == "pending":
        rows.insert(0, _student(status="pending", reason="checkpoint missing"))
    res = evaluate_gates(rows, ALL_GATES)
    for gate in ("max_top1_drop", "max_ece_increase", "max_corruption_drop"):
        r = _by(res, gate)
        assert r["status"] == "pending" and "student" in r["message"]
    for gate in ("min_agreement", "max_ece", "min_corruption_accuracy"):
        assert _by(res, gate)["status"] == "pass"


def test_evaluated_student_is_preferred_over_a_pending_one() -> None:
    rows = [_student(status="pending", reason="x"), _row("torch-fp32-b", "student", top1=0.95), _row("model.onnx")]
    [r] = evaluate_gates(rows, ONLY["max_top1_drop"])
    assert r["status"] == "pass" and r["value"] == 0.0


# --------------------------------------------------------------------------- exit code / summary


def test_exit_code_treats_unknown_status_as_failure() -> None:
    assert exit_code([]) == 0
    assert exit_code([{"status": "pass"}, {"status": "pending"}]) == 0
    assert exit_code([{"status": "pass"}, {"status": "fail"}]) == 1
    assert exit_code([{"status": "PASS"}]) == 1
    assert exit_code([{}]) == 1


def test_summarize_lists_each_gate_and_verdict() -> None:
    rows = [_student(), _row("model.onnx"), _row("model.int8.onnx", agree=0.9)]
    res = evaluate_gates(rows, ALL_GATES)
    lines = summarize(res).splitlines()
    assert len(lines) == 2 * len(GATES) + 1
    assert any(line.startswith("FAIL") and "model.int8.onnx" in line and "min_agreement" in line for line in lines)
    assert lines[-1].startswith("verdict: FAIL") and "exit code 1" in lines[-1]


def test_inputs_are_not_mutated() -> None:
    rows = [_student(), _row("model.onnx"), _row("model.fp16.engine", status="pending", reason="no GPU")]
    before = copy.deepcopy(rows)
    evaluate_gates(rows, ALL_GATES)
    assert rows == before


# --------------------------------------------------------------------------- issue 13: worst class, noise, CLIP


def test_worst_class_drop_fails_where_the_mean_hides_it() -> None:
    stu, art = _student(top1=0.90), _row("model.onnx", top1=0.90)
    stu["clean"]["per_class_top1"] = [0.90, 0.90, 0.90]
    art["clean"]["per_class_top1"] = [0.95, 0.95, 0.80]  # same mean, one class lost 10 points
    res = evaluate_gates([stu, art], ALL_GATES)
    assert _by(res, "max_top1_drop")["status"] == "pass"
    r = _by(res, "max_class_top1_drop")
    assert r["status"] == "fail" and r["value"] == pytest.approx(0.10)
    absent = _row("model.onnx")
    absent["clean"]["per_class_top1"] = [None, 0.95, 1.0]  # a class without test images is skipped
    assert _one("max_class_top1_drop", absent)["status"] == "pass"
    del absent["clean"]["per_class_top1"]
    assert _one("max_class_top1_drop", absent)["status"] == "pending"


def test_a_gate_that_passes_inside_the_noise_says_so() -> None:
    art = _row("model.onnx", top1=0.945, agree=0.975)
    art["top1_drop"] = {"value": 0.005, "low": -0.002, "high": 0.012, "level": 0.95, "method": "paired bootstrap"}
    art["agreement"]["student"]["top1_agreement_interval"] = {"low": 0.99, "high": 0.999, "level": 0.95,
                                                              "method": "exact binomial (Clopper-Pearson)"}
    res = evaluate_gates([_student(top1=0.95), art], ALL_GATES)
    drop = _by(res, "max_top1_drop")
    assert drop["status"] == "pass" and drop["noise"] is True
    assert "only inside the noise" in drop["message"] and "95% interval" in drop["message"]
    assert drop["interval"]["method"] == "paired bootstrap"
    agree = _by(res, "min_agreement")
    assert agree["status"] == "pass" and agree["noise"] is False and "only inside" not in agree["message"]
    assert "[0.9900, 0.9990]" in agree["message"]
    json.dumps(res, allow_nan=False)
    from richkd_deploy.evaluate.report import render_html, render_markdown

    doc = {"run": "r", "rows": [_student(top1=0.95), art], "gates": res}
    assert "pass only inside the noise" in render_markdown(doc) and 'id="noise"' in render_html(doc)


def test_random_clip_fails_unless_the_recipe_allows_it() -> None:
    from richkd_deploy.evaluate.gates import clip_gate

    r = clip_gate(clip_random=True, allow_random_clip=False)
    assert r["gate"] == "clip_pretrained" and r["status"] == "fail"
    assert "RANDOM CLIP" in r["message"] and "validate.allow_random_clip" in r["message"]
    assert exit_code([r]) == 1
    assert clip_gate(clip_random=True, allow_random_clip=True)["status"] == "pass"
    assert clip_gate(clip_random=False, allow_random_clip=False)["status"] == "pass"
    assert "FAIL" in summarize([r])


def test_one_table_of_gate_names() -> None:
    from richkd_deploy import recipe
    from richkd_deploy.errors import RecipeError
    from richkd_deploy.evaluate.gates import GATE_SPECS

    assert tuple(GATE_SPECS) == recipe.GATE_NAMES == tuple(f.name for f in __import__("dataclasses").fields(GatesConfig))
    for name in recipe.GATE_NAMES:  # every gate gets the recipe's range check
        with pytest.raises(RecipeError, match=f"validate.gates.{name}"):
            recipe.from_dict({"validate": {"gates": {name: 1.5}}})
    assert recipe.from_dict({"validate": {"allow_random_clip": True}}).validate.allow_random_clip is True
