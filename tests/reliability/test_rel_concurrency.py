"""Issue 7.3: two `train` or `export` processes on one run folder: the second refuses
with a clear message; a SIGKILLed holder's lock is taken over by the next run, and a
stale lock file naming a live but unrelated pid (pid reuse) blocks nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from richkd_deploy.manifest import read_manifest, verify_artifact
from richkd_deploy.runs import run_lock
from tests.reliability.rel_helpers import (
    TRAIN,
    assert_one_line_error,
    assert_result_error,
    copy_run,
    invoke,
    run_cli,
    sigkill,
    start,
    wait_for_pause,
)


@pytest.mark.slow
def test_train_holds_the_run_and_a_killed_holder_is_taken_over(reference_run: Path, tmp_path: Path) -> None:
    run = copy_run(reference_run, tmp_path / "run")
    args = [*TRAIN, "--run-dir", str(run), "--resume", "-o", "optim.epochs=3"]
    holder = start(args, tmp_path / "holder.err", fault="step:student#1")
    try:
        wait_for_pause(holder, tmp_path / "holder.err", "step:student#1")
        in_use = f"is in use by another process (train, pid {holder.pid})"
        second = run_cli(*args)  # the real console script
        assert_one_line_error(second.returncode, second.stderr, 2, in_use, "--run-dir")
        assert_result_error(invoke("export", str(run), "--quiet"), 2, in_use)
        assert not (run / "export").exists()
    finally:
        sigkill(holder)
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid  # left behind by the kill
    taken_over = invoke("export", str(run), "--quiet")
    assert taken_over.exit_code == 0, taken_over.output
    manifest = read_manifest(run)
    for entry in manifest["artifacts"]:
        verify_artifact(manifest, entry["file"])
    assert not (run / ".lock").exists()


@pytest.mark.slow
def test_second_export_is_refused_and_a_killed_export_is_taken_over(exported_run: Path, tmp_path: Path) -> None:
    run = copy_run(exported_run, tmp_path / "run")
    manifest_before = (run / "export" / "manifest.json").read_bytes()
    point = "write:*/.staging-*/model.onnx"
    holder = start(["export", str(run), "--force", "--quiet"], tmp_path / "holder.err", fault=point)
    try:
        wait_for_pause(holder, tmp_path / "holder.err", point)
        assert_result_error(invoke("export", str(run), "--force", "--quiet"), 2,
                            f"is in use by another process (export, pid {holder.pid})")
    finally:
        sigkill(holder)
    assert (run / "export" / "manifest.json").read_bytes() == manifest_before
    assert list((run / "export").glob(".staging-*")) and (run / ".lock").exists()
    again = invoke("export", str(run), "--force", "--quiet")
    assert again.exit_code == 0, again.output
    manifest = read_manifest(run)
    for entry in manifest["artifacts"]:
        verify_artifact(manifest, entry["file"])
    assert not list((run / "export").glob(".staging-*")) and not (run / ".lock").exists()


def test_a_stale_lock_whose_pid_was_reused_does_not_block(tmp_path: Path) -> None:
    """The holder died; its pid now belongs to an unrelated live process. A pid check
    alone would refuse forever; the kernel lock knows nobody holds it."""
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": unrelated.pid, "command": "train"}))
        with run_lock(tmp_path, "export"):
            assert json.loads((tmp_path / ".lock").read_text()) == {"pid": os.getpid(), "command": "export"}
        assert not (tmp_path / ".lock").exists()
    finally:
        unrelated.kill()
        unrelated.wait()
