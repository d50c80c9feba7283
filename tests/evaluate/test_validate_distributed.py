"""validate split across 2 gloo ranks on the CPU writes the results.json of one process,
and a rank that hangs makes the others stop with one line instead of waiting forever."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from exporters.pipeline import export_run
from richkd_deploy.evaluate.distributed import batch_share
from tests.evaluate.test_validate_runs import _make_run, _quiet
from tests.train.test_ddp import run_bounded

VOLATILE = {"created_at", "seconds", "runtime"}  # timestamps, timings, per-process runtime details


def strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def test_batch_shares_are_whole_batches_in_order():
    for n, bs, world in ((300, 128, 2), (40, 128, 2), (1000, 7, 3), (0, 8, 2), (5, 2, 4)):
        shares = [batch_share(n, bs, r, world) for r in range(world)]
        covered = [i for s in shares for i in range(n)[s]]
        assert covered == list(range(n))
        assert all(s.start % bs == 0 for s in shares)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = _make_run(tmp_path_factory.mktemp("vdist") / "runs" / "exp")
    export_run(run, quiet=True, log=_quiet)
    return run


def validate(run: Path, nproc: int, env: dict[str, str] | None = None):
    settings = [f"{k}={v}" for k, v in {"OMP_NUM_THREADS": "1", **(env or {})}.items()]
    cmd = ["env", *settings, sys.executable, "-m", "richkd_deploy", "validate", str(run), "--quiet", "--nproc",
           str(nproc)]
    return run_bounded(cmd, timeout=300)


@pytest.mark.slow
def test_two_ranks_write_the_single_process_results(exported: Path):
    one = validate(exported, 1)
    assert one.returncode in (0, 1), one.stderr[-3000:]
    single = json.loads((exported / "eval" / "results.json").read_text())
    (exported / "eval" / "results.json").unlink()
    two = validate(exported, 2)
    assert two.returncode == one.returncode, two.stderr[-3000:]
    both = json.loads((exported / "eval" / "results.json").read_text())
    assert len(both["rows"]) >= 3 and both["rows"][0]["clean"]["top1"] is not None
    assert strip(both) == strip(single)


@pytest.mark.slow
def test_a_hung_rank_stops_the_others_with_one_line(exported: Path):
    proc = validate(exported, 2, env={"RICHKD_FAULT_PAUSE": "validate:rank1", "RICHKD_DIST_TIMEOUT_S": "15"})
    assert proc.returncode == 2  # not 1, which means "a gate failed"
    assert "validate rank 0: lost the other ranks while gathering" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: validate --nproc 2: a rank failed")
