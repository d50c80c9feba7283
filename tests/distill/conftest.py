"""Fixtures for the distillation tests: cached and online targets from a tiny random CLIP."""

from __future__ import annotations

import pytest

from tests.fakes import MEAN, STD, FakeDataset


@pytest.fixture(scope="session")
def clip_sources(tmp_path_factory):
    """Cached and online targets from one tiny random CLIP over a 24-image dataset."""
    from richkd_deploy.clip.targets import prepare_clip_targets
    from richkd_deploy.recipe import from_dict
    from richkd_deploy.runs import RunDir

    ds = FakeDataset()
    run = RunDir(tmp_path_factory.mktemp("run"))
    out = {}
    for targets in ("cached", "online"):
        recipe = from_dict({"data": {"dataset": "synthetic", "num_workers": 0},
                            "clip": {"model": "tiny-ViT", "pretrained": "none", "allow_random": True,
                                     "targets": targets, "batch_size": 12}})
        out[targets] = prepare_clip_targets(recipe, run, ds, None, "cpu", lambda m: None, MEAN, STD, quiet=True)
    return ds, out
