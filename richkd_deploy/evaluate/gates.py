"""Ship/no-ship gates: turn the validate results rows into pass / fail / pending verdicts.

`richkd-deploy validate` exists to refuse an exported model that got worse on the
way out of PyTorch, so the rules here lean towards refusing:

- Every gate compares an *artifact* row (ONNX, INT8, engine, ...) with a bound,
  either absolute (ECE, corruption accuracy) or relative to the torch student row
  (the same network before export), because export damage is what we are guarding
  against.
- A gate can only pass when all of its inputs are present and sane. A value that is
  NaN, infinite, not a number, or a fraction outside [0, 1] fails: a broken metric
  must never let a broken model through.
- A gate whose inputs were never measured (a backend that cannot run on this
  machine, corruptions switched off, no torch student row) is "pending": it does
  not fail the run (exit code 0) but it is never reported as passed, and
  `summarize` prints it as PENDING with the reason.
- Top-1 drop and agreement carry a 95 % interval measured by the harness (paired
  bootstrap for the drop, exact binomial for the agreement; results.json names the
  method). A gate whose interval contains its bound passes or fails only inside
  the noise of the test set, and its message says so (`noise: true`).
- Run-level gates (`clip_gate`) judge the run, not an artifact: a student distilled
  from random CLIP weights fails unless the recipe sets validate.allow_random_clip.
- Bounds are inclusive. Relative gates are differences of fractions, so
  `0.95 - 0.94` is `0.010000000000000009`; values within a rounding error
  (1e-9 relative) of the bound count as on the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from richkd_deploy.recipe import GATE_NAMES, GatesConfig

Status = Literal["pass", "fail", "pending"]
Verdict = Literal["pass", "fail", "pending"]

_REL_TOL = 1e-9
_ABS_TOL = 1e-12


class _Missing(Exception):
    """An input of a gate was not measured: the gate is pending, with this reason."""


class _Invalid(Exception):
    """An input of a gate is present but unusable (NaN, out of range): the gate fails."""


# --------------------------------------------------------------------------- inputs


def _lookup(row: Mapping[str, Any] | None, path: Sequence[str], what: str) -> Any:
    cur: Any = row
    for key in path:
        if not isinstance(cur, Mapping) or cur.get(key) is None:
            raise _Missing(f"{what} not evaluated")
        cur = cur[key]
    return cur


def _fraction(row: Mapping[str, Any] | None, path: Sequence[str], what: str) -> float:
    """A metric that must be a finite fraction in [0, 1]; anything else cannot pass."""
    raw = _lookup(row, path, what)
    # bool is an int subclass; a True accuracy is a bug, not 100 %.
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Invalid(f"{what} is not a number ({raw!r})")
    value = float(raw)
    if math.isnan(value):
        raise _Invalid(f"{what} is NaN")
    if not 0.0 <= value <= 1.0:
        raise _Invalid(f"{what} = {value!r} is outside [0, 1]")
    return value


def _student_fraction(student: Mapping[str, Any] | None, path: Sequence[str], what: str) -> float:
    if student is None:
        raise _Missing("no torch student row to compare with")
    if student.get("status") != "ok":
        reason = student.get("reason") or f"status {student.get('status')!r}"
        raise _Missing(f"torch student not evaluated ({reason})")
    return _fraction(student, path, f"torch student {what}")


def _corruption_keys(row: Mapping[str, Any]) -> set[tuple[str, str]] | None:
    acc = (row.get("corruptions") or {}).get("accuracy")
    if not isinstance(acc, Mapping):
        return None
    return {(str(c), str(s)) for c, sev in acc.items() if isinstance(sev, Mapping) for s in sev}


def _same_corruptions(artifact: Mapping[str, Any], student: Mapping[str, Any]) -> None:
    """Means over different corruption sets are not comparable; a mismatch is a harness bug."""
    a, s = _corruption_keys(artifact), _corruption_keys(student)
    if a is not None and s is not None and a != s:
        raise _Invalid(
            f"artifact and torch student were evaluated on different corruption x severity sets "
            f"({len(a)} vs {len(s)} cells)"
        )


# --------------------------------------------------------------------------- gates


def _top1_drop(art: Mapping[str, Any], stu: Mapping[str, Any] | None) -> float:
    a = _fraction(art, ("clean", "top1"), "top-1")
    s = _student_fraction(stu, ("clean", "top1"), "top-1")
    return s - a


def _agreement(art: Mapping[str, Any], stu: Mapping[str, Any] | None) -> float:
    return _fraction(art, ("agreement", "student", "top1_agreement"), "top-1 agreement with the torch student")


def _ece(art: Mapping[str, Any], stu: Mapping[str, Any] | None) -> float:
    return _fraction(art, ("clean", "ece"), "ECE")


def _ece_increase(art: Mapping[str, Any], stu: Mapping[str, Any] | None) -> float:
    a = _fraction(art, ("clean", "ece"), "ECE")
    s = _student_fraction(stu, ("clean", "ece"), "ECE")
    return a - s


def _corruption_accuracy(art: Mapping[str, Any], stu: Mapping[str, Any] | None) -> float:
    return _fraction(art, ("corruptions", "mean_accuracy"), "corruption accuracy")


def _corruption_drop(art: Mapping[str, Any], stu: Mapping[str, Any] | None) -> float:
    a = _fraction(art, ("corruptions", "mean_accuracy"), "corruption accuracy")
    s = _student_fraction(stu, ("corruptions", "mean_accuracy"), "corruption accuracy")
    assert stu is not None  # _student_fraction raised otherwise
    _same_corruptions(art, stu)
    return s - a


def _class_top1_drop(art: Mapping[str, Any], stu: Mapping[str, Any] | None) -> float:
    """The largest per-class top-1 drop: a model can keep its mean and lose one class."""
    a = _lookup(art, ("clean", "per_class_top1"), "per-class top-1")
    if stu is None:
        raise _Missing("no torch student row to compare with")
    s = _lookup(stu, ("clean", "per_class_top1"), "torch student per-class top-1")
    if not isinstance(a, Sequence) or not isinstance(s, Sequence) or len(a) != len(s):
        raise _Invalid("per-class top-1 of the artifact and the torch student do not cover the same classes")
    drops = [_fraction({"v": sv}, ("v",), f"torch student class {c} top-1") - _fraction({"v": av}, ("v",), f"class {c} top-1")
             for c, (av, sv) in enumerate(zip(a, s, strict=True)) if av is not None and sv is not None]
    if not drops:
        raise _Missing("no class has test images")
    return max(drops)


def _interval(row: Mapping[str, Any], path: Sequence[str]) -> dict[str, Any] | None:
    """A measured interval {low, high, level, method}, or None where none was recorded."""
    cur: Any = row
    for key in path:
        cur = cur.get(key) if isinstance(cur, Mapping) else None
    if not isinstance(cur, Mapping):
        return None
    lo, hi = cur.get("low"), cur.get("high")
    if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in (lo, hi)):
        return None
    return {"low": float(lo), "high": float(hi), "level": cur.get("level"), "method": cur.get("method")}


@dataclass(frozen=True)
class GateSpec:
    """What one `GatesConfig` field checks; the report uses it for wording and units."""

    name: str
    op: Literal["<=", ">="]
    unit: Literal["fraction", "points"]  # "points": a difference of two fractions
    description: str
    compute: Callable[[Mapping[str, Any], Mapping[str, Any] | None], float]
    interval: tuple[str, ...] | None = None  # where the row keeps the value's 95 % interval


# The gates, in report order; their names are recipe.GATE_NAMES (GatesConfig's fields).
GATES: tuple[GateSpec, ...] = (
    GateSpec("max_top1_drop", "<=", "points", "top-1 drop vs the torch student", _top1_drop, ("top1_drop",)),
    GateSpec("min_agreement", ">=", "fraction", "top-1 agreement with the torch student", _agreement,
             ("agreement", "student", "top1_agreement_interval")),
    GateSpec("max_ece", "<=", "fraction", "expected calibration error", _ece),
    GateSpec("max_ece_increase", "<=", "points", "ECE increase vs the torch student", _ece_increase),
    GateSpec("min_corruption_accuracy", ">=", "fraction", "mean accuracy over corruptions x severities",
             _corruption_accuracy),
    GateSpec("max_corruption_drop", "<=", "points", "mean corruption accuracy drop vs the torch student",
             _corruption_drop),
    GateSpec("max_class_top1_drop", "<=", "points", "largest per-class top-1 drop vs the torch student",
             _class_top1_drop),
)
GATE_SPECS: dict[str, GateSpec] = {g.name: g for g in GATES}
if tuple(GATE_SPECS) != GATE_NAMES:  # a gate added to the recipe but not here (or back) is a bug
    raise RuntimeError(f"evaluate.gates.GATES {tuple(GATE_SPECS)} != recipe.GATE_NAMES {GATE_NAMES}")

CLIP_GATE = "clip_pretrained"


def clip_gate(clip_random: bool, allow_random_clip: bool) -> dict[str, Any]:
    """The run-level gate on CLIP provenance (student.pt's `clip_random`, set by train).

    A student distilled from randomly initialised CLIP weights learned from noise in
    place of CLIP's knowledge: it must not ship by accident. The recipe can allow it
    (validate.allow_random_clip: true, as the smoke recipe does to test mechanics).
    """
    if not clip_random:
        return _result(CLIP_GATE, "student.pt", None, None, "pass", "the student was not distilled from random CLIP weights")
    if allow_random_clip:
        return _result(CLIP_GATE, "student.pt", None, None, "pass",
                       "the student was distilled from RANDOM CLIP weights, allowed by validate.allow_random_clip; "
                       "not a model to ship")
    return _result(CLIP_GATE, "student.pt", None, None, "fail",
                   "the student was distilled from RANDOM CLIP weights (clip.pretrained none or unreachable, "
                   "clip.allow_random true), so its CLIP supervision was noise; retrain with pretrained CLIP weights "
                   "(clip.pretrained), or set validate.allow_random_clip: true to accept it knowingly")


def _holds(value: float, op: str, bound: float) -> bool:
    """Inclusive comparison tolerant to float rounding; NaN on either side never holds."""
    if math.isnan(value) or math.isnan(bound):
        return False
    if math.isclose(value, bound, rel_tol=_REL_TOL, abs_tol=_ABS_TOL):
        return True
    return value <= bound if op == "<=" else value >= bound


def _fmt(x: float, unit: str) -> str:
    return f"{x:.4f}" if unit == "fraction" else f"{x:+.4f}"


def _result(gate: str, artifact: str, value: float | None, bound: float | None, status: Status, message: str,
            interval: dict[str, Any] | None = None, noise: bool = False) -> dict[str, Any]:
    return {"gate": gate, "artifact": artifact, "value": value, "bound": bound, "status": status, "message": message,
            "interval": interval, "noise": noise}


def _student_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The torch student is the reference every relative gate compares against."""
    students = [r for r in rows if r.get("role") == "student"]
    for r in students:  # prefer an evaluated one, then the canonical name
        if r.get("status") == "ok":
            return r
    by_name = [r for r in students if r.get("name") == "torch-fp32"]
    return (by_name or students or [None])[0]


def _bound(gates_cfg: GatesConfig, name: str) -> float | None:
    raw = getattr(gates_cfg, name)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TypeError(f"validate.gates.{name} must be a number or null, got {raw!r}")
    return float(raw)


def evaluate_gates(rows: list[dict], gates_cfg: GatesConfig) -> list[dict]:
    """Check every artifact row against every enabled gate.

    Returns one result per (artifact, gate whose bound is not None), artifacts in row
    order, gates in `GATES` order: {"gate", "artifact", "value", "bound", "status",
    "message"}. `value` is the measured float, or None when it could not be measured
    or is not finite (results.json must stay strict JSON; the message says why).
    With no artifact row at all, one failing "artifacts" result is returned: a
    validate run that validated nothing must not exit 0.
    """
    enabled = [(spec, b) for spec in GATES if (b := _bound(gates_cfg, spec.name)) is not None]
    artifacts = [r for r in rows if r.get("role") == "artifact"]
    if not artifacts:
        return [_result("artifacts", "-", None, 0.0, "fail", "no exported artifact in the results; run `richkd-deploy export` first")]
    student = _student_row(rows)
    out: list[dict] = []
    for row in artifacts:
        name = str(row.get("name") or row.get("file") or "?")
        status = row.get("status")
        for spec, bound in enabled:
            if status == "pending":
                out.append(_result(spec.name, name, None, bound, "pending", str(row.get("reason") or "not evaluated on this machine")))
                continue
            if status != "ok":
                why = row.get("reason") or "no reason given"
                out.append(_result(spec.name, name, None, bound, "fail", f"artifact status {status!r}: {why}"))
                continue
            try:
                value = spec.compute(row, student)
            except _Missing as exc:
                out.append(_result(spec.name, name, None, bound, "pending", str(exc)))
                continue
            except _Invalid as exc:
                out.append(_result(spec.name, name, None, bound, "fail", str(exc)))
                continue
            ok = _holds(value, spec.op, bound)
            verb = "holds" if ok else "violated"
            msg = f"{spec.description}: {_fmt(value, spec.unit)} {spec.op} {_fmt(bound, spec.unit)} {verb}"
            interval = _interval(row, spec.interval) if spec.interval else None
            noise = interval is not None and interval["low"] <= bound <= interval["high"]
            if interval is not None:
                span = f"{int(round(100 * (interval['level'] or 0.95)))}% interval [{_fmt(interval['low'], spec.unit)}, " \
                       f"{_fmt(interval['high'], spec.unit)}]"
                msg += (f"; {'holds' if ok else 'violated'} only inside the noise: {span} contains the bound"
                        if noise else f"; {span}")
            out.append(_result(spec.name, name, value, bound, "pass" if ok else "fail", msg, interval, noise))
    return out


def exit_code(gate_results: Sequence[Mapping[str, Any]]) -> int:
    """1 if any gate failed, else 0. Pending gates do not fail the run (they are shown).

    Anything that is not exactly "pass" or "pending" counts as a failure, so a
    malformed result cannot slip through.
    """
    return 1 if any(r.get("status") not in ("pass", "pending") for r in gate_results) else 0


def verdict(gate_results: Sequence[Mapping[str, Any]]) -> Verdict:
    """The overall outcome: fail if any gate failed, else pending if any was not checked, else pass."""
    if exit_code(gate_results):
        return "fail"
    if any(r.get("status") == "pending" for r in gate_results):
        return "pending"
    return "pass"


def counts(gate_results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Number of results per status, for headlines."""
    c = {"pass": 0, "fail": 0, "pending": 0}
    for r in gate_results:
        st = r.get("status")
        c[st if st in c else "fail"] += 1
    return c


def summarize(gate_results: Sequence[Mapping[str, Any]]) -> str:
    """Human-readable lines for the terminal, one per gate, plus a verdict line.

    An artifact whose gates are all pending for the same reason (its backend cannot
    run here) collapses to one line, "PENDING <artifact>: <reason>", so the user sees
    at a glance what was not checked.
    """
    lines: list[str] = []
    by_artifact: dict[str, list[Mapping[str, Any]]] = {}
    for r in gate_results:
        by_artifact.setdefault(str(r.get("artifact")), []).append(r)
    width = max((len(str(r.get("gate"))) for r in gate_results), default=0)
    awidth = max((len(str(r.get("artifact"))) for r in gate_results), default=0)
    for artifact, results in by_artifact.items():
        messages = {r.get("message") for r in results}
        if len(results) > 1 and all(r.get("status") == "pending" for r in results) and len(messages) == 1:
            lines.append(f"PENDING {artifact}: {results[0].get('message')} ({len(results)} gates not checked)")
            continue
        for r in results:
            st = r.get("status")
            label = st.upper() if st in ("pass", "fail", "pending") else "FAIL"
            lines.append(f"{label:<7} {artifact:<{awidth}}  {str(r.get('gate')):<{width}}  {r.get('message')}")
    c = counts(gate_results)
    v = verdict(gate_results)
    tail = {
        "pass": "all gates hold",
        "fail": "do not ship",
        "pending": "no gate failed, but pending gates were NOT checked",
    }[v]
    lines.append(
        f"verdict: {v.upper()} ({c['pass']} passed, {c['fail']} failed, {c['pending']} pending) - {tail}; "
        f"exit code {exit_code(gate_results)}"
    )
    return "\n".join(lines)
