"""Issue 7.1 (train): kill -9 a smoke `train` at five seeded moments (mid-epoch, mid
checkpoint write, mid CLIP cache build); `train --resume` finishes it with weights
bit-identical to the uninterrupted reference run (CPU).

The moments are fault points (richkd_deploy.faults): the process stops there and is
SIGKILLed, so "during a checkpoint write" is hit every time, not by luck. Which step,
which write and which cache batch is drawn from a seeded random.Random. The five
trials (kill, inspect, resume) run two at a time (single-threaded processes on a
2-core machine); each test below then checks one trial's record."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from richkd_deploy.clip.cache import FEATURES_FILE, LOGITS_FILE, validate_clip_cache
from tests.reliability.rel_helpers import CLIP_BATCHES, STEPS_PER_EPOCH, TRAIN, kill_at, run_cli
from tests.train.helpers import same_weights

SEED = 21  # draws: teacher step 2 of 4, student step 7 of 8, the student's last last.pt, student.pt, CLIP batch 3 of 5
_rng = random.Random(SEED)
# last.pt is written 3 times: teacher epoch 1, student epochs 1 and 2.
TRIALS = {
    "mid-epoch-teacher": f"step:teacher#{_rng.randint(1, STEPS_PER_EPOCH)}",
    "mid-epoch-student": f"step:student#{_rng.randint(1, 2 * STEPS_PER_EPOCH)}",
    "checkpoint-write": f"write:*/checkpoints/last.pt#{_rng.randint(1, 3)}",
    "final-write": f"write:*/{_rng.choice(['teacher/teacher.pt', 'run/student.pt'])}",
    "clip-cache-build": f"clip-cache:batch#{_rng.randint(1, CLIP_BATCHES)}",
}


def _unloadable(run: Path) -> list[str]:
    bad = []
    for path in run.rglob("*.pt"):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means a partial file under a final name
            bad.append(f"{path}: {type(exc).__name__}")
    return bad


def _trial(folder: Path, point: str) -> dict[str, Any]:
    """Kill at `point`, record what the kill left, resume."""
    run = folder / "run"
    where = kill_at([*TRAIN, "--run-dir", str(run)], point, folder / "killed.err")
    record: dict[str, Any] = {
        "run": run, "where": where, "lock_left": (run / ".lock").exists(), "unloadable": _unloadable(run),
        "student_exists": (run / "student.pt").exists(), "clip": validate_clip_cache(run / "clip"),
        "clip_arrays": [n for n in (LOGITS_FILE, FEATURES_FILE) if (run / "clip" / n).exists()],
    }
    if where.startswith("write:"):
        target = Path(where.split(":", 1)[1])
        record["temps"] = [p.name for p in target.parent.glob(f".{target.name}.*.tmp")]
    record["resume"] = run_cli(*TRAIN, "--run-dir", str(run), "--resume")
    return record


@pytest.fixture(scope="module")
def trials(reference_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_trial, tmp_path_factory.mktemp(name), point) for name, point in TRIALS.items()}
        return {name: f.exception() or f.result() for name, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(TRIALS))
def test_sigkill_then_resume_is_bit_identical(reference_run: Path, trials: dict[str, Any], moment: str) -> None:
    t = trials[moment]
    if isinstance(t, BaseException):
        raise t
    run = t["run"]
    assert t["lock_left"]  # the killed holder's lock was left behind...
    assert t["unloadable"] == []  # ...but never a partial checkpoint under a final name
    assert not t["student_exists"]
    if TRIALS[moment].startswith("write:"):
        assert t["temps"], f"not killed inside the write of {t['where']}"  # new data written, not yet renamed in
    if TRIALS[moment].startswith("clip-cache"):
        assert t["clip"] == "no cache yet" and t["clip_arrays"] == []  # a partial cache is never taken as valid

    resumed = t["resume"]  # ...and taken over by the resume
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert same_weights(reference_run / "teacher" / "teacher.pt", run / "teacher" / "teacher.pt")
    assert same_weights(reference_run / "student.pt", run / "student.pt")
    assert validate_clip_cache(run / "clip") is None
    assert not (run / ".lock").exists()
