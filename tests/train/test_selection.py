"""Issue 16.3: the student is chosen on the holdout split (never the test set), student.pt
is the chosen epoch, metrics.csv and train.log show best (with its epoch) and last, and a
resumed run makes the same choice."""

from __future__ import annotations

import csv

import pytest
import torch

from richkd_deploy import recipe
from richkd_deploy.errors import RecipeError
from tests.train.helpers import SMOKE, cli, same_weights

VANILLA = ("-o", "distill.method=vanilla")


def rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(ln for ln in f if not ln.startswith("#"))]


@pytest.fixture(scope="module")
def best_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("sel") / "run"
    out = cli("train", str(SMOKE), *VANILLA, "-o", "optim.epochs=3", "--run-dir", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    return run


def test_student_pt_is_the_best_holdout_epoch(best_run):
    table = rows(best_run)
    holdout = [float(r["holdout_acc"]) for r in table]
    best_epoch = holdout.index(max(holdout)) + 1  # the first epoch with the best holdout top-1
    assert [int(r["best_epoch"]) for r in table][-1] == best_epoch
    payload = torch.load(best_run / "student.pt", map_location="cpu", weights_only=True)
    best = torch.load(best_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == payload["selection"]["epoch"] == best_epoch
    assert payload["selection"]["by"] == "holdout top-1" and payload["last_epoch"]["epoch"] == 3
    assert payload["test_acc"] == pytest.approx(float(table[best_epoch - 1]["test_acc"]), abs=1e-5)
    assert same_weights(best_run / "student.pt", best_run / "checkpoints" / "best.pt")
    log = (best_run / "train.log").read_text()
    assert f"student: best epoch {best_epoch} (holdout top-1" in log and "last epoch 3 (holdout top-1" in log


def test_resume_makes_the_same_choice(best_run, tmp_path):
    run = tmp_path / "run"
    first = cli("train", str(SMOKE), *VANILLA, "-o", "optim.epochs=2", "--run-dir", str(run), "--quiet")
    assert first.returncode == 0, first.stderr
    resumed = cli("train", str(SMOKE), *VANILLA, "-o", "optim.epochs=3", "--run-dir", str(run), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(best_run / "student.pt", run / "student.pt")
    assert same_weights(best_run / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    assert [r["best_epoch"] for r in rows(run)] == [r["best_epoch"] for r in rows(best_run)]


def test_select_last_and_select_best_without_a_holdout(tmp_path):
    r = recipe.from_dict({"optim": {"select": "last"}})
    assert r.optim.select == "last" and recipe.from_dict({}).optim.select == "auto"
    with pytest.raises(RecipeError, match="optim.select: best .* data.holdout_fraction"):
        recipe.from_dict({"optim": {"select": "best"}, "data": {"holdout_fraction": 0}})


def test_metrics_csv_starts_with_its_header_and_the_notes_sit_beside_it(best_run):
    """Issue 13.9: `#` lines above the header made pandas.read_csv and spreadsheets misread the file."""
    import json

    text = (best_run / "metrics.csv").read_text()
    assert text.splitlines()[0].startswith("epoch,lr,train_loss,train_acc,ce,test_loss,test_acc,seconds,")
    assert "#" not in text
    with open(best_run / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["epoch"] for r in table] == ["1", "2", "3"]
    doc = json.loads((best_run / "metrics.json").read_text())
    assert any("student stage, method vanilla, recipe hash" in n for n in doc["notes"])
    assert doc["last"]["epoch"] == 3 and doc["best"]["epoch"] == int(table[-1]["best_epoch"])
    assert doc["best_by"] == "holdout_acc"


def test_tensorboard_event_files_beside_metrics_csv(best_run):
    """Issue 16.8: with tensorboard installed, every loss term, accuracy and the lr per epoch."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(best_run.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(best_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/ce", "acc/train", "loss/test", "acc/test", "acc/holdout", "lr"} <= tags
    table = rows(best_run)
    assert [e.step for e in events.Scalars("acc/test")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("acc/holdout")] == pytest.approx([float(r["holdout_acc"]) for r in table],
                                                                             abs=1e-5)
