"""optim.schedule: "step" (MultiStepLR per epoch, unchanged) and "cosine" (per batch:
linear warm-up, then a cosine to 0 at the stage's last step), each stage over its own
epochs. The demo uses cosine: a few epochs end better annealed than with a few steps."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from richkd_deploy import recipe
from richkd_deploy.errors import RecipeError
from richkd_deploy.recipe import OptimConfig
from richkd_deploy.train.state import make_scheduler, steps_per_batch
from tests.train.helpers import SMOKE, cli


def _lrs(cfg: OptimConfig, epochs: int, steps_per_epoch: int, lr: float = 0.1) -> list[float]:
    """The lr of every optimiser step, stepping as the loop does."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_scheduler(opt, cfg, epochs, steps_per_epoch)
    out = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if steps_per_batch(cfg):
                sched.step()
        if not steps_per_batch(cfg):
            sched.step()
    out.append(opt.param_groups[0]["lr"])  # after the last step: what metrics.csv shows
    return out


def test_cosine_warms_up_linearly_then_decays_to_zero():
    lrs = _lrs(OptimConfig(schedule="cosine", warmup_epochs=0.5), epochs=2, steps_per_epoch=10)
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # 5 warm-up steps, from lr/5 up to lr
    decay = lrs[5:20]
    assert decay[0] == pytest.approx(0.1) and all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert decay[7] == pytest.approx(0.05 * (1 + math.cos(math.pi * 7 / 15)))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_cosine_without_warmup_starts_at_the_full_lr():
    lrs = _lrs(OptimConfig(schedule="cosine"), epochs=1, steps_per_epoch=4)
    assert lrs == pytest.approx([0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05, 0.05 * (1 + math.cos(3 * math.pi / 4)), 0])


def test_step_stays_the_per_epoch_multistep_schedule():
    lrs = _lrs(OptimConfig(milestones=(1, 2), gamma=0.3), epochs=3, steps_per_epoch=2)
    assert lrs == pytest.approx([0.1, 0.1, 0.03, 0.03, 0.009, 0.009, 0.009])
    assert OptimConfig().schedule == "step"


def test_recipe_keys_are_checked():
    r = recipe.from_dict({"optim": {"schedule": "cosine", "warmup_epochs": 0.25}})
    assert r.optim.schedule == "cosine" and r.optim.warmup_epochs == 0.25
    with pytest.raises(RecipeError, match="optim.schedule"):
        recipe.from_dict({"optim": {"schedule": "onecycle"}})
    with pytest.raises(RecipeError, match="optim.warmup_epochs"):
        recipe.from_dict({"optim": {"warmup_epochs": -1}})


def test_the_loop_steps_cosine_per_batch_for_each_stage_over_its_own_epochs(tmp_path):
    run = tmp_path / "run"
    out = cli("train", str(SMOKE), "-o", "distill.method=kd", "-o", "optim.schedule=cosine",
              "-o", "optim.warmup_epochs=0.5", "-o", "optim.epochs=2", "-o", "teacher.epochs=1",
              "--run-dir", str(run), "--quiet")
    assert out.returncode == 0, out.stderr

    def lrs(path):
        with open(path, newline="") as f:
            return [float(r["lr"]) for r in csv.DictReader(f)]

    student = lrs(run / "metrics.csv")
    assert len(student) == 2 and 0.01 < student[0] < 0.05 and student[1] == pytest.approx(0.0, abs=1e-9)
    assert lrs(run / "teacher" / "metrics.csv") == pytest.approx([0.0], abs=1e-9)  # its own, 1-epoch horizon
