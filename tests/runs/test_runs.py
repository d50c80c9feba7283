from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from richkd_deploy.errors import RunError
from richkd_deploy.runs import atomic_write_bytes, atomic_write_json, newest_run, run_lock, sha256_file


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_failing_writer_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.bin"
    atomic_write_bytes(p, b"old")

    def boom(f):
        f.write(b"partial")
        raise ValueError("writer failed")

    from richkd_deploy.runs import atomic_write

    with pytest.raises(ValueError):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.bin"]


def test_file_size_limit_gives_a_clear_error_and_keeps_the_old_file(tmp_path):
    p = tmp_path / "big.bin"
    atomic_write_bytes(p, b"old")
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from pathlib import Path\n"
        "from richkd_deploy.runs import atomic_write_bytes\n"
        "from richkd_deploy.errors import RunError\n"
        "try:\n"
        f"    atomic_write_bytes(Path({str(p)!r}), b'x' * 100000)\n"
        "except RunError as e:\n"
        "    print(e); sys.exit(2)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "could not write" in out.stdout and "file too large" in out.stdout
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["big.bin"]


def test_lock_refuses_a_second_holder_and_survives_a_dead_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import time, sys; from pathlib import Path; from richkd_deploy.runs import run_lock\n"
                               f"with run_lock(Path({str(tmp_path)!r}), 'train'):\n"
                               "    print('locked', flush=True); time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match="in use by another process"), run_lock(tmp_path, "export"):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the killed holder left its lock file behind; it must not block forever
    assert (tmp_path / ".lock").exists()
    with run_lock(tmp_path, "export"):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_newest_run_and_hash(tmp_path):
    with pytest.raises(RunError, match="train one first"):
        newest_run(tmp_path / "runs")
    for name in ("a", "b"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "student.pt").write_bytes(name.encode())
        time.sleep(0.01)
    os.utime(tmp_path / "runs" / "a" / "student.pt", (time.time() + 5, time.time() + 5))
    assert newest_run(tmp_path / "runs").name == "a"
    assert sha256_file(tmp_path / "runs" / "b" / "student.pt") == \
        "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"


def test_taking_the_lock_sweeps_temp_files_of_killed_writes(tmp_path):
    """A SIGKILL between the temp write and the rename leaves `.<name>.<random>.tmp`
    behind; the next command on the run removes it, and nothing else."""
    root = tmp_path / "run"
    stale = [root / "checkpoints" / ".last.pt.k3j2.tmp", root / "clip" / ".train_logits.npy.4242.tmp",
             root / ".metrics.csv.x1.tmp"]
    kept = [root / "checkpoints" / "last.pt", root / "notes.tmp", root / "export" / ".staging-1" / ".model.onnx.a.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    with run_lock(root, "train"):
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)
