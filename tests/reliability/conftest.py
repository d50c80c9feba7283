"""One uninterrupted reference run (and its export), shared by the whole reliability
suite: every kill trial is compared with it, and the hostile-file tests damage copies
of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.rel_helpers import TRAIN, copy_run, run_cli


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small smoke run, trained without interruption (read-only: copy it to change it)."""
    run = tmp_path_factory.mktemp("rel-reference") / "run"
    out = run_cli(*TRAIN, "--run-dir", str(run))
    assert out.returncode == 0, out.stderr
    assert (run / "student.pt").is_file() and not (run / ".lock").exists()
    return run


@pytest.fixture(scope="session")
def exported_run(reference_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the reference run with a complete export (read-only: copy it to change it)."""
    run = copy_run(reference_run, tmp_path_factory.mktemp("rel-exported") / "run")
    out = run_cli("export", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    assert (run / "export" / "manifest.json").is_file()
    return run
