"""Issue 7.2: a checkpoint or artifact write that fails midway (a file-size limit,
`ulimit -f`, with SIGXFSZ ignored so write() raises EFBIG) leaves the previous last.pt,
manifest and artifacts intact and reports one line, exit 2, no traceback."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

from richkd_deploy.manifest import read_manifest, verify_artifact
from tests.reliability.rel_helpers import TRAIN, assert_one_line_error, copy_run, env
from tests.train.helpers import REPO

LIMIT = 64 * 1024  # far below a checkpoint or an ONNX file, far above recipe.yaml, metrics.csv or .lock


def _file_size_limit(nbytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def run_limited(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "richkd_deploy", *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=300, preexec_fn=_file_size_limit(LIMIT))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_checkpoint_write_keeps_the_previous_last_pt(reference_run: Path, tmp_path: Path) -> None:
    run = copy_run(reference_run, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    assert last.stat().st_size > 4 * LIMIT
    before = {p: p.read_bytes() for p in (last, run / "checkpoints" / "best.pt", run / "student.pt")}
    out = run_limited(*TRAIN, "--run-dir", str(run), "--resume", "-o", "optim.epochs=3")  # epoch 3 must be saved
    # best.pt is written before last.pt when epoch 3 is the best on the holdout: either write may be the one refused
    line = assert_one_line_error(out.returncode, out.stderr, 2, f"could not write {last.parent}/", "file too large",
                                 "unchanged")
    assert "RuntimeError" not in line
    for path, data in before.items():
        assert path.read_bytes() == data, path
    assert not list(last.parent.glob(".*.tmp")) and not (run / ".lock").exists()


def test_failed_artifact_write_keeps_the_previous_export(exported_run: Path, tmp_path: Path) -> None:
    run = copy_run(exported_run, tmp_path / "run")
    before = _snapshot(run / "export")
    out = run_limited("export", str(run), "--force", "--quiet")
    assert_one_line_error(out.returncode, out.stderr, 2, "could not write", "model.onnx", "file too large")
    assert _snapshot(run / "export") == before  # manifest and every artifact, byte for byte; no staging left
    manifest = read_manifest(run)
    for entry in manifest["artifacts"]:
        verify_artifact(manifest, entry["file"])
    assert not (run / ".lock").exists()


def test_failed_calibrated_model_write_keeps_the_manifest(exported_run: Path, tmp_path: Path) -> None:
    run = copy_run(exported_run, tmp_path / "run")
    before = _snapshot(run / "export")
    out = run_limited("validate", str(run), "--calibrate", "--quiet")
    assert_one_line_error(out.returncode, out.stderr, 2, "could not write", "model.calibrated.onnx", "file too large")
    assert _snapshot(run / "export") == before
    assert not (run / "eval" / "results.json").exists() and not (run / ".lock").exists()
