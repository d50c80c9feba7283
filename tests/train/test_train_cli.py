from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.train.helpers import REPO, SMOKE, cli, same_weights

VANILLA = ("-o", "distill.method=vanilla")


def read_metrics(path):
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    return list(csv.DictReader(lines))


def test_vanilla_smoke_run_end_to_end(tmp_path):
    out = cli("train", str(SMOKE), *VANILLA, "-o", "optim.epochs=2", "--run-dir", str(tmp_path / "run"), "--quiet")
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run"
    payload = torch.load(run / "student.pt", map_location="cpu", weights_only=True)
    assert payload["format"] == "richkd-deploy/student/1" and payload["arch"] == "resnet8"
    assert payload["num_classes"] == len(payload["classes"]) == 10
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["test_acc"]) > 0.3  # 10 classes: well above chance after 2 epochs
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    assert not (run / "teacher").exists()  # vanilla needs no teacher
    # a second train into the same folder must not silently overwrite it
    again = cli("train", str(SMOKE), *VANILLA, "--run-dir", str(run), "--quiet")
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    assert same_weights(run / "student.pt", run / "student.pt")


def test_resume_at_an_epoch_boundary_matches_an_uninterrupted_run(tmp_path):
    # optim.select last: student.pt is the last epoch's weights, so the two runs differ before the resume
    # (test_selection.py resumes with the best-holdout choice)
    last = ("-o", "optim.select=last")
    full = cli("train", str(SMOKE), *VANILLA, *last, "-o", "optim.epochs=2", "--run-dir", str(tmp_path / "a"), "--quiet")
    assert full.returncode == 0, full.stderr
    first = cli("train", str(SMOKE), *VANILLA, *last, "-o", "optim.epochs=1", "--run-dir", str(tmp_path / "b"), "--quiet")
    assert first.returncode == 0, first.stderr
    assert not same_weights(tmp_path / "a" / "student.pt", tmp_path / "b" / "student.pt")
    resumed = cli("train", str(SMOKE), *VANILLA, *last, "-o", "optim.epochs=2", "--run-dir", str(tmp_path / "b"),
                  "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(tmp_path / "a" / "student.pt", tmp_path / "b" / "student.pt")


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_is_bit_identical(tmp_path):
    args = ["train", str(SMOKE), *VANILLA, "-o", "optim.epochs=3", "-o", "data.train_limit=2400", "--quiet"]
    ref = cli(*args, "--run-dir", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "int"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "richkd_deploy", *args, "--run-dir", str(run)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.7)  # somewhere inside the second epoch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 0), err
    if proc.returncode == 130:
        assert "--resume" in err and "Traceback" not in err
        state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        assert state["epoch"] >= 1
    resumed = cli(*args, "--run-dir", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(tmp_path / "ref" / "student.pt", run / "student.pt")


def test_bad_recipe_and_unwritable_folder_exit_2_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochs: many\n")
    out = cli("train", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "optim.epochs" in out.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = cli("train", str(SMOKE), *VANILLA, "--run-dir", str(blocker / "run"))
    assert out.returncode == 2 and "not writable" in out.stderr and "Traceback" not in out.stderr
    out = cli("train", str(SMOKE), *VANILLA, "-o", "student.arch=resnet9000", "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "student.arch" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_teacher_checkpoint_of_another_class_count_is_refused(tmp_path):
    from richkd_deploy.models import create_model

    ckpt = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8", num_classes=100).state_dict()}, ckpt)
    out = cli("train", str(SMOKE), "-o", "distill.method=kd", "-o", f"teacher.checkpoint={ckpt}",
              "--run-dir", str(tmp_path / "run"), "--quiet")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "fc.weight" in out.stderr
