"""Issue 7.1 (export, validate): kill -9 at seeded random moments and at the commit
points; afterwards no file that the manifest or eval/results.json lists is partial,
and a rerun completes."""

from __future__ import annotations

import json
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from richkd_deploy.manifest import read_manifest, verify_artifact
from tests.exporters.helpers import listed_files_ok
from tests.reliability.rel_helpers import copy_run, kill_at, run_cli, sigkill, start

SEED = 20240607
RANDOM_KILLS = 2


def _timed(*args: str) -> tuple[float, int, str]:
    t0 = time.monotonic()
    out = run_cli(*args)
    return time.monotonic() - t0, out.returncode, out.stderr


def _kill_after(args: list[str], delay: float, log: Path) -> bool:
    """SIGKILL `args` after `delay` seconds; False if it had already finished."""
    proc = start(args, log)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:  # still running, as intended
        sigkill(proc)
        return True


def _results_consistent(run: Path) -> None:
    """eval/results.json, when present, is complete, and every artifact it lists is
    complete: the file the manifest vouches for, or (a results file left by an earlier
    run, whose model a killed --calibrate was replacing) a whole, loadable ONNX."""
    import onnx

    listed_files_ok(run / "export")
    path = run / "eval" / "results.json"
    if not path.exists():
        return
    results = json.loads(path.read_text())
    assert results["schema"] == "richkd-deploy/validate/1" and results["rows"]
    manifest = read_manifest(run) if (run / "export" / "manifest.json").exists() else None
    for row in results["rows"]:
        if row["role"] != "artifact":
            continue
        name = Path(row["file"]).name
        if manifest is not None and manifest.artifact(name) is not None:
            verify_artifact(manifest, name)
        else:
            onnx.checker.check_model(onnx.load(str(run / "export" / name)), full_check=True)


def _export_sequence(exported_run: Path, tmp_path: Path) -> None:
    run = copy_run(exported_run, tmp_path / "run")
    args = ["export", str(run), "--force", "--quiet"]
    full, code, err = _timed(*args)
    assert code == 0, err
    warm, code, err = _timed(*args)  # the first run pays cold caches: time the kills on the faster one
    assert code == 0, err
    full = min(full, warm)
    rng = random.Random(SEED)
    killed = 0
    for i in range(RANDOM_KILLS):
        killed += _kill_after(args, rng.uniform(0.2 * full, 0.7 * full), tmp_path / f"kill{i}.err")
        assert listed_files_ok(run / "export")
    assert killed >= 1
    # at the commit point itself: the old manifest is withdrawn, the new one not yet in place
    kill_at(args, "write:*/export/manifest.json", tmp_path / "commit.err")
    assert not (run / "export" / "manifest.json").exists()
    assert listed_files_ok(run / "export")
    _, code, err = _timed(*args)
    assert code == 0, err
    manifest = read_manifest(run)
    assert len(manifest["artifacts"]) >= 3
    for entry in manifest["artifacts"]:
        verify_artifact(manifest, entry["file"])
    assert not list((run / "export").glob(".staging-*")) and not (run / ".lock").exists()


def _validate_sequence(exported_run: Path, tmp_path: Path) -> None:
    run = copy_run(exported_run, tmp_path / "run")
    args = ["validate", str(run), "--calibrate", "--quiet"]
    full, code, err = _timed(*args)
    assert code in (0, 1), err
    _results_consistent(run)
    rng = random.Random(SEED + 1)
    killed = 0
    for i in range(RANDOM_KILLS):
        killed += _kill_after(args, rng.uniform(0.3 * full, 1.0 * full), tmp_path / f"kill{i}.err")
        _results_consistent(run)
    assert killed >= 1
    # inside each commit: the manifest that lists the calibrated model, then the results
    for i, point in enumerate(("write:*/export/manifest.json", "write:*/eval/results.json")):
        kill_at(args, point, tmp_path / f"commit{i}.err")
        _results_consistent(run)
    _, code, err = _timed(*args)
    assert code in (0, 1), err
    _results_consistent(run)
    names = {row["name"] for row in json.loads((run / "eval" / "results.json").read_text())["rows"]}
    assert {"model.onnx", "model.int8.onnx", "model.calibrated.onnx"} <= names
    assert not (run / ".lock").exists()


@pytest.fixture(scope="module")
def sequences(exported_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, BaseException | None]:
    """Both sequences side by side (separate run folders); each test re-raises its own failure."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(fn, exported_run, tmp_path_factory.mktemp(name))
                   for name, fn in (("export", _export_sequence), ("validate", _validate_sequence))}
        return {name: f.exception() for name, f in futures.items()}


@pytest.mark.slow
def test_export_killed_at_random_moments_then_rerun(sequences: dict[str, BaseException | None]) -> None:
    if sequences["export"] is not None:
        raise sequences["export"]


@pytest.mark.slow
def test_validate_killed_at_random_moments_then_rerun(sequences: dict[str, BaseException | None]) -> None:
    if sequences["validate"] is not None:
        raise sequences["validate"]
