"""Cached and online CLIP targets: fingerprint, reuse, rebuild, corruption, and agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from richkd_deploy.clip.cache import (
    FEATURES_FILE,
    LOGITS_FILE,
    META_FILE,
    CachedClipTargets,
    ClipCacheError,
    build_clip_cache,
    cache_fingerprint,
    validate_clip_cache,
    wait_for_clip_cache,
)
from richkd_deploy.clip.online import OnlineClipTargets
from richkd_deploy.clip.prompts import ZeroShotHead, build_class_embeddings
from richkd_deploy.clip.targets import prepare_clip_targets
from richkd_deploy.recipe import from_dict
from richkd_deploy.runs import RunDir
from tests.fakes import MEAN, STD, FakeDataset


def make_recipe(**clip):
    cfg = {"model": "tiny-ViT", "pretrained": "none", "allow_random": True, "batch_size": 16, **clip}
    return from_dict({"data": {"dataset": "synthetic", "num_workers": 0}, "clip": cfg,
                      "distill": {"method": "richkd_lf"}})


def prepare(tmp_path, train, test=None, log=None, **clip):
    return prepare_clip_targets(make_recipe(**clip), RunDir(tmp_path / "run"), train, test, "cpu",
                                log or (lambda m: None), MEAN, STD, quiet=True)


def stamps(clip_dir):
    return {n: (clip_dir / n).stat().st_mtime_ns for n in (LOGITS_FILE, FEATURES_FILE, META_FILE)}


def test_cache_built_once_reused_and_shaped(tmp_path):
    train, test = FakeDataset(n=24), FakeDataset(n=8, seed=1)
    logs: list[str] = []
    src = prepare(tmp_path, train, test, log=logs.append)
    assert isinstance(src, CachedClipTargets) and src.built_now
    assert any("zero-shot top-1 on the test set" in m for m in logs)
    assert any("RANDOM" in m for m in logs)
    assert (src.num_classes, src.feature_dim, src.is_random) == (4, 32, True)
    clip_dir = tmp_path / "run" / "clip"
    assert (clip_dir / "text_embeddings.pt").is_file()
    assert np.load(clip_dir / LOGITS_FILE).dtype == np.float32
    assert np.load(clip_dir / FEATURES_FILE).dtype == np.float16
    logits, feats = src.get(torch.tensor([3, 0, 23]), torch.zeros(3, 3, 32, 32))
    assert logits.shape == (3, 4) and feats.shape == (3, 32)
    assert logits.dtype == feats.dtype == torch.float32
    before = stamps(clip_dir)
    again = prepare(tmp_path, train, test)
    assert not again.built_now and stamps(clip_dir) == before
    torch.testing.assert_close(again.get(torch.tensor([3]), torch.zeros(1))[0], logits[:1])


@pytest.mark.parametrize("change", ["templates", "logit_scale", "size", "name_format", "content"])
def test_fingerprint_change_rebuilds(tmp_path, change):
    train = FakeDataset(n=24)
    prepare(tmp_path, train)
    kwargs: dict = {}
    if change == "templates":
        kwargs["templates"] = ["a photo of a {}"]
    elif change == "logit_scale":
        kwargs["logit_scale"] = 1.0
    elif change == "name_format":
        kwargs["class_name_format"] = "raw"
    elif change == "size":
        train = FakeDataset(n=20)
    else:
        train = FakeDataset(n=24)
        train.images[5] = 255 - train.images[5]
    logs: list[str] = []
    src = prepare(tmp_path, train, log=logs.append, **kwargs)
    assert src.built_now and any("rebuilding the CLIP target cache" in m for m in logs)
    assert src.num_images == len(train)
    if change == "logit_scale":
        assert src.logits.max() <= 1.0 + 1e-5  # raw cosine


@pytest.mark.parametrize("victim", [LOGITS_FILE, FEATURES_FILE])
def test_truncated_cache_is_rebuilt(tmp_path, victim):
    train = FakeDataset(n=24)
    prepare(tmp_path, train)
    path = tmp_path / "run" / "clip" / victim
    good = np.load(path).copy()
    path.write_bytes(path.read_bytes()[:-64])
    assert "wrong size" in validate_clip_cache(path.parent)
    logs: list[str] = []
    src = prepare(tmp_path, train, log=logs.append)
    assert src.built_now and any("truncated" in m for m in logs)
    np.testing.assert_array_equal(np.load(path), good)


def test_interrupted_build_leaves_no_valid_cache(tiny_clip, tmp_path):
    train = FakeDataset(n=24)
    head = ZeroShotHead(build_class_embeddings(tiny_clip.model, tiny_clip.tokenizer, train.classes, ["a {}"]), 1.0)
    fp = cache_fingerprint(tiny_clip, ["a {}"], "spaces", 1.0, "fake", train)
    clip_dir = tmp_path / "clip"
    assert build_clip_cache(tiny_clip, head, train, clip_dir, fp, batch_size=8, quiet=True)
    assert not build_clip_cache(tiny_clip, head, train, clip_dir, fp, batch_size=8, quiet=True)  # idempotent

    class Broken(FakeDataset):
        def raw(self, i):
            if i == 17:
                raise RuntimeError("disk error")
            return super().raw(i)

    with pytest.raises(RuntimeError, match="disk error"):
        build_clip_cache(tiny_clip, head, Broken(n=24), clip_dir, fp, batch_size=8, quiet=True, force=True)
    assert validate_clip_cache(clip_dir, fp) == "no cache yet"
    assert sorted(p.name for p in clip_dir.iterdir()) == [FEATURES_FILE, LOGITS_FILE]  # temps removed
    with pytest.raises(ClipCacheError):
        wait_for_clip_cache(clip_dir, fp, timeout_s=0.2, poll_s=0.05)
    assert build_clip_cache(tiny_clip, head, train, clip_dir, fp, batch_size=8, quiet=True)
    assert wait_for_clip_cache(clip_dir, fp, timeout_s=1).num_images == 24


def test_non_building_rank_waits_for_valid_cache(tmp_path):
    train = FakeDataset(n=24)
    prepare(tmp_path, train)
    src = prepare_clip_targets(make_recipe(), RunDir(tmp_path / "run"), train, None, "cpu", lambda m: None,
                               MEAN, STD, build_cache=False, quiet=True, wait_timeout_s=1)
    assert isinstance(src, CachedClipTargets) and src.num_images == 24


def test_online_equals_cached_for_unaugmented_images(tmp_path):
    train = FakeDataset(n=24)
    cached = prepare(tmp_path, train)
    online = prepare(tmp_path, train, targets="online")
    assert isinstance(online, OnlineClipTargets)
    idx = torch.arange(24)
    images = torch.stack([train[i][0] for i in range(24)])
    c_logits, c_feats = cached.get(idx, images)
    o_logits, o_feats = online.get(idx, images)
    assert o_logits.shape == (24, 4) and o_feats.shape == (24, 32)
    torch.testing.assert_close(o_feats, c_feats, atol=2e-3, rtol=2e-3)  # cache stores float16 features
    torch.testing.assert_close(o_logits, c_logits, atol=1e-4, rtol=1e-4)


def test_online_resizes_and_handles_grey(tiny_clip):
    emb = build_class_embeddings(tiny_clip.model, tiny_clip.tokenizer, ["a", "b", "c"], ["{}"])
    online = OnlineClipTargets(tiny_clip, ZeroShotHead(emb, 1.0), (0.5,), (0.5,))
    small = torch.rand(5, 1, 16, 24) * 2 - 1
    x = online.to_clip_input(small)
    assert x.shape == (5, 3, 32, 32)
    # the grey channel becomes three equal RGB channels before CLIP's (per-channel) normalisation
    mean = torch.tensor(tiny_clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny_clip.std).view(1, 3, 1, 1)
    rgb = x * std + mean
    torch.testing.assert_close(rgb[:, 0], rgb[:, 1], atol=1e-6, rtol=0)
    logits, feats = online.get(torch.arange(5), small)
    assert logits.shape == (5, 3) and feats.shape == (5, 32)
    assert logits.abs().max() <= 1 + 1e-5


def test_with_the_toolkits_own_dataset(tmp_path):
    synthetic = pytest.importorskip("richkd_deploy.data.synthetic")
    train, test = synthetic.make_synthetic("train", n=30), synthetic.make_synthetic("test", n=10)
    src = prepare(tmp_path, train, test)
    assert src.built_now and src.num_images == 30 and src.num_classes == len(train.classes)
    assert src.fingerprint["content_sha256"] == train.fingerprint()
    assert not prepare(tmp_path, train, test).built_now
    assert prepare(tmp_path, train.subset(range(29)), test).built_now  # a limit changes the rows


@pytest.mark.parametrize("clip_workers, expected", [(None, 0), (2, 2)])
def test_the_cache_build_uses_clip_num_workers_else_the_datas(tmp_path, monkeypatch, clip_workers, expected):
    import richkd_deploy.clip.targets as targets_mod

    seen: list[int] = []
    real = targets_mod.build_clip_cache

    def spy(loaded, head, train_ds, clip_dir, fp, device, batch_size, workers, *args, **kwargs):
        seen.append(workers)
        return real(loaded, head, train_ds, clip_dir, fp, device, batch_size, workers, *args, **kwargs)

    monkeypatch.setattr(targets_mod, "build_clip_cache", spy)
    src = prepare(tmp_path, FakeDataset(n=24), num_workers=clip_workers)  # data.num_workers is 0
    assert seen == [expected] and src.built_now
