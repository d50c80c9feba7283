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
- Bounds are inclusive. Relative gates are differences of fractions, so
  `0.95 - 0.94` is `0.010000000000000009`; values within a rounding error
  (1e-9 relative) of the bound count as on the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from richkd_deploy.recipe import GatesConfig

Status = Literal["pass", "fail", "pending"]
Verdict = Literal["pass", "fail", "pending"]

_REL_TOL = 1e-9
_ABS_TOL = 1e-12


@dataclass(frozen=True)
class GateSpec:
    """What one `GatesConfig` field checks; the report uses it for wording and units."""

    name: str
    op: Literal["<=", ">="]
    unit: Literal["fraction", "points"]  # "points": a difference of two fractions
    description: str


GATES: tuple[GateSpec, ...] = (
    GateSpec("max_top1_drop", "<=", "points", "top-1 drop vs the torch student"),
    GateSpec("min_agreement", ">=", "fraction", "top-1 agreement with the torch student"),
    GateSpec("max_ece", "<=", "fraction", "expected calibration error"),
    GateSpec("max_ece_increase", "<=", "points", "ECE increase vs the torch student"),
    GateSpec("min_corruption_accuracy", ">=", "fraction", "mean accuracy over corruptions x severities"),
    GateSpec("max_corruption_drop", "<=", "points", "mean corruption accuracy drop vs the torch student"),
)
GATE_SPECS: dict[str, GateSpec] = {g.name: g for g in GATES}


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


_COMPUTE: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any] | None], float]] = {
    "max_top1_drop": _top1_drop,
    "min_agreement": _agreement,
    "max_ece": _ece,
    "max_ece_increase": _ece_increase,
    "min_corruption_accuracy": _corruption_accuracy,
    "max_corruption_drop": _corruption_drop,
}


def _holds(value: float, op: str, bound: float) -> bool:
    """Inclusive comparison tolerant to float rounding; NaN on either side never holds."""
    if math.isnan(value) or math.isnan(bound):
        return False
    if math.isclose(value, bound, rel_tol=_REL_TOL, abs_tol=_ABS_TOL):
        return True
    return value <= bound if op == "<=" else value >= bound


def _fmt(x: float, unit: str) -> str:
    return f"{x:.4f}" if unit == "fraction" else f"{x:+.4f}"


def _result(gate: str, artifact: str, value: float | None, bound: float, status: Status, message: str) -> dict[str, Any]:
    return {"gate": gate, "artifact": artifact, "value": value, "bound": bound, "status": status, "message": message}


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
                value = _COMPUTE[spec.name](row, student)
            except _Missing as exc:
                out.append(_result(spec.name, name, None, bound, "pending", str(exc)))
                continue
            except _Invalid as exc:
                out.append(_result(spec.name, name, None, bound, "fail", str(exc)))
                continue
            ok = _holds(value, spec.op, bound)
            verb = "holds" if ok else "violated"
            msg = f"{spec.description}: {_fmt(value, spec.unit)} {spec.op} {_fmt(bound, spec.unit)} {verb}"
            out.append(_result(spec.name, name, value, bound, "pass" if ok else "fail", msg))
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
