"""teacher.targets: the frozen teacher's outputs computed once, only where the
training transform draws nothing, and identical to running the teacher."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from richkd_deploy.data import ImageArrayDataset, make_loader
from richkd_deploy.data.transforms import EvalTransform, RandomResizedCropTransform, TrainTransform
from richkd_deploy.distill import create_distiller
from richkd_deploy.errors import RecipeError
from richkd_deploy.models import create_model
from richkd_deploy.recipe import DistillConfig
from richkd_deploy.train.teacher_targets import (
    build_teacher_targets,
    should_cache,
    transform_draws_nothing,
)
from tests.train.helpers import cli

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _dataset(transform, n=40, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return ImageArrayDataset(images, np.arange(n) % 4, ["a", "b", "c", "d"], transform=transform)


def test_which_transforms_draw_nothing():
    assert TrainTransform(32, MEAN, STD, crop_padding=0, hflip=False).deterministic
    assert not TrainTransform(32, MEAN, STD, crop_padding=4, hflip=False).deterministic
    assert not TrainTransform(32, MEAN, STD, crop_padding=0, hflip=True).deterministic
    assert not RandomResizedCropTransform(32, MEAN, STD).deterministic
    assert EvalTransform(32, MEAN, STD).deterministic
    assert not transform_draws_nothing(_dataset(lambda im: torch.zeros(3, 32, 32)))  # a user's: unknown, random
    assert not transform_draws_nothing(_dataset(None))


def test_should_cache_follows_the_mode_and_the_transform(monkeypatch):
    fixed = _dataset(TrainTransform(32, MEAN, STD, crop_padding=0, hflip=False))
    drawn = _dataset(TrainTransform(32, MEAN, STD))
    assert should_cache("auto", fixed, 4, 64)[0]
    assert should_cache("cached", fixed, 4, 64)[0]
    assert not should_cache("online", fixed, 4, 64)[0]
    assert not should_cache("auto", drawn, 4, 64)[0]
    with pytest.raises(RecipeError, match="data.hflip: false"):
        should_cache("cached", drawn, 4, 64)
    monkeypatch.setattr("richkd_deploy.train.teacher_targets.AUTO_LIMIT_BYTES", 1000)
    cache, why = should_cache("auto", fixed, 4, 64)  # 40 x 68 x 4 bytes > 1000
    assert not cache and "GiB" in why
    assert should_cache("cached", fixed, 4, 64)[0]  # asked for explicitly


def test_cached_targets_equal_the_online_teacher_and_skip_it():
    torch.manual_seed(0)
    ds = _dataset(TrainTransform(32, MEAN, STD, crop_padding=0, hflip=False))
    teacher = create_model("resnet8", num_classes=4).eval()
    table, _ = build_teacher_targets(teacher, ds, torch.device("cpu"), batch_size=16, num_workers=0, seed=0)
    assert len(table) == len(ds)
    cfg = DistillConfig(method="kd", nce_k=8, feat_dim=16)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))

    def terms(targets):
        torch.manual_seed(1)
        student = create_model("resnet8", num_classes=4)
        d = create_distiller("crd", dataclasses.replace(cfg, method="crd", w_logit=1.0), student, teacher,
                             num_train=len(ds), train_labels=ds.labels, teacher_targets=targets)
        k = create_distiller("kd", cfg, student, teacher, teacher_targets=targets)
        loader = make_loader(ds, batch_size=12, shuffle=True, num_workers=0, seed=3)
        images, labels, indices = next(iter(loader))
        return k(images, labels, indices)[1]["kd"], d(images, labels, indices)[1]["crd"]

    calls.clear()
    online = terms(None)
    assert calls  # the teacher ran
    calls.clear()
    cached = terms(table)
    assert not calls  # looked up, not run
    for a, b in zip(online, cached, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_train_run_caches_the_teacher_only_without_augmentation(tmp_path):
    base = ["train", "recipes/smoke.yaml", "--quiet", "-o", "data.train_limit=300", "-o", "data.test_limit=100",
            "-o", "clip.batch_size=50"]
    fixed = cli(*base, "--run-dir", str(tmp_path / "fixed"), "-o", "data.crop_padding=0", "-o", "data.hflip=false")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    log = (tmp_path / "fixed" / "train.log").read_text()
    assert "teacher targets cached" in log and "270 images" in log
    drawn = cli(*base, "--run-dir", str(tmp_path / "drawn"), "-o", "teacher.targets=cached")
    assert drawn.returncode == 2
    assert "teacher.targets: cached needs a training transform" in drawn.stderr
    assert not (tmp_path / "drawn" / "teacher" / "teacher.pt").exists()  # refused before any training
