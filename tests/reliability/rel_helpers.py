"""Shared by the reliability suite: the small smoke settings, killing a process at a
named fault point, and running the CLI in-process exactly as the console script does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from richkd_deploy import cli as cli_module
from richkd_deploy.faults import ENV as FAULT_ENV
from richkd_deploy.faults import MARKER as FAULT_MARKER
from tests.train.helpers import REPO, SMOKE, cli

# The smoke recipe, made smaller: 300 images (270 train after the 10% holdout, so
# 4 steps per epoch at batch 64), 2 student epochs, 1 teacher epoch, a CLIP cache of
# 5 batches of 64; validate with two cheap corruptions on 50 images.
SMALL = ("-o", "data.train_limit=300", "-o", "data.test_limit=100", "-o", "optim.epochs=2",
         "-o", "clip.batch_size=64", "-o", "validate.corruptions.samples=50",
         "-o", "validate.corruptions.names=[gaussian_noise,brightness]", "-o", "validate.corruptions.severities=[1,3]",
         "-o", "export.calibration_images=32", "-o", "export.parity_images=32")
TRAIN = ("train", str(SMOKE), *SMALL, "--quiet")
STEPS_PER_EPOCH = 270 // 64
CLIP_BATCHES = -(-270 // 64)


# Every training process of the suite uses one intra-op thread: bit-identity needs the
# same thread count everywhere, and two single-threaded processes side by side use a
# 2-core CI machine better than one process with two threads.
THREADS = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """tests.train.helpers.cli with the suite's thread setting."""
    return cli(*args, timeout=timeout, env=THREADS)


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **THREADS)
    e.pop(FAULT_ENV, None)
    e.update(extra)
    return e


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def start(args: tuple[str, ...] | list[str], log: Path, fault: str | None = None, **popen: Any) -> subprocess.Popen:
    """`python -m richkd_deploy ARGS` in the background, stderr to `log` (polled, never a pipe
    that could fill up)."""
    extra = {FAULT_ENV: fault} if fault else {}
    with open(log, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "richkd_deploy", *args], cwd=REPO, env=env(**extra),
                                stdout=subprocess.DEVNULL, stderr=err, **popen)


def wait_for_pause(proc: subprocess.Popen, log: Path, point: str, timeout: float = 180) -> str:
    """Block until `proc` reports it is paused at its fault point; fail clearly if it ends
    (or hangs) first. Returns the point it paused at."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith(FAULT_MARKER):
                return line[len(FAULT_MARKER):].strip()
        if proc.poll() is not None:
            raise AssertionError(f"fault point {point!r} never reached (exit {proc.returncode}): {text[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"fault point {point!r} not reached within {timeout}s: {text[-3000:]}")
        time.sleep(0.02)


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def kill_at(args: tuple[str, ...] | list[str], point: str, log: Path) -> str:
    """Run ARGS until it pauses at `point`, then SIGKILL it there."""
    proc = start(args, log, fault=point)
    try:
        where = wait_for_pause(proc, log, point)
    finally:
        if proc.poll() is None:
            sigkill(proc)
    return where


def assert_one_line_error(code: int, stderr: str, expected_code: int, *fragments: str) -> str:
    """The user-error contract: exit `expected_code`, the error reported in exactly one
    line on stderr that starts with `error:` and names what is wrong (it is the last
    line: only log lines, such as the smoke recipe's random-CLIP warning, may precede
    it), and no traceback."""
    assert "Traceback" not in stderr, stderr
    assert code == expected_code, (code, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


class ConsoleEntry:
    """`richkd_deploy.cli:main` (what the `richkd-deploy` script and `python -m
    richkd_deploy` run) in the shape `CliRunner.invoke` calls, so an in-process call
    goes through the same RichKDError -> one line + exit 2 handling, not click's own
    standalone mode."""

    name = "richkd-deploy"

    def main(self, args: Any = (), prog_name: str | None = None, **_: Any) -> None:
        cli_module.main(list(args))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(ConsoleEntry(), [str(a) for a in args], prog_name="richkd-deploy")


def assert_result_error(result: Result, expected_code: int, *fragments: str) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return assert_one_line_error(result.exit_code, result.stderr, expected_code, *fragments)
