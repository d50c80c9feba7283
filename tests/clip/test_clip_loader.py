"""CLIP loading: random (seeded, frozen, loud), local file, refusals and the fast offline failure."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from richkd_deploy.clip import loader
from richkd_deploy.clip.loader import ClipLoadError, load_clip
from richkd_deploy.errors import RecipeError, RichKDError


def test_random_load_is_frozen_seeded_and_described(tiny_clip, caplog):
    m = tiny_clip.model
    assert not m.training and all(not p.requires_grad for p in m.parameters())
    assert tiny_clip.is_random and tiny_clip.weights_id.startswith("random")
    assert (tiny_clip.image_size, tiny_clip.embed_dim) == (32, 32)
    assert tiny_clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    tokens = tiny_clip.tokenizer(["a photo of a cat"])
    assert tokens.shape == (1, 77)
    with caplog.at_level(logging.WARNING, logger="richkd_deploy.clip"):
        again = load_clip("tiny-ViT", "none", allow_random=True)
    assert "RANDOM weights" in caplog.text
    for a, b in zip(m.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same "random teacher" in every process


def test_none_without_allow_random_is_refused():
    with pytest.raises(RecipeError, match="allow_random"):
        load_clip("tiny-ViT", "none", allow_random=False)


def test_unknown_architecture_lists_close_names():
    with pytest.raises(RecipeError, match="ViT-B-32"):
        load_clip("ViT-B-23", "none", allow_random=True)


def test_local_checkpoint_file(tiny_clip, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    got = load_clip("tiny-ViT", str(path))
    assert not got.is_random and got.weights_id.startswith(str(path.resolve()) + "@sha256:")
    assert torch.equal(got.model.visual.conv1.weight, tiny_clip.model.visual.conv1.weight)
    assert all(not p.requires_grad for p in got.model.parameters())


def test_checkpoint_for_another_architecture_is_a_clear_error(tiny_clip, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ClipLoadError, match="does not|matches clip.model"):
        load_clip("tiny-ViT", str(path))


def test_missing_file_and_unknown_tag():
    with pytest.raises(ClipLoadError, match="does not exist"):
        load_clip("tiny-ViT", "/nonexistent/model.safetensors")
    with pytest.raises(ClipLoadError, match="neither a file nor an open_clip tag"):
        load_clip("ViT-B-32", "no_such_tag")


def test_offline_hub_tag_fails_fast_with_instructions():
    t0 = time.perf_counter()
    with pytest.raises(RichKDError) as info:
        load_clip("ViT-L-14", "openai")
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert "\n" not in msg
    assert "clip.pretrained: /path/to/open_clip_model.safetensors" in msg
    assert "-o clip.pretrained=PATH" in msg and "clip.allow_random: true" in msg


def test_unreachable_hub_fails_fast_even_when_not_marked_offline(monkeypatch):
    monkeypatch.setattr(loader, "_hub_offline", lambda: False)
    monkeypatch.setattr(loader, "_reachable", lambda url, timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(ClipLoadError, match="cannot be reached"):
        load_clip("ViT-B-32", "openai")
    assert time.perf_counter() - t0 < 10


def test_probe_is_bounded_in_time():
    t0 = time.perf_counter()
    assert loader._reachable("https://unreachable.invalid", timeout=1.0) is False
    assert time.perf_counter() - t0 < 3


def test_cached_hub_file_is_found_without_network(tmp_path):
    snap = tmp_path / "models--org--repo" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    (tmp_path / "models--org--repo" / "refs").mkdir()
    (tmp_path / "models--org--repo" / "refs" / "main").write_text("abc123")
    found = loader._cached_tag_file({"hf_hub": "org/repo/"}, hf_cache_dir=str(tmp_path))
    assert found == str(snap / "open_clip_model.safetensors")
    assert loader._cached_tag_file({"hf_hub": "org/other/"}, hf_cache_dir=str(tmp_path)) is None


def test_cached_tag_loads_from_the_cache_with_the_tag_settings(tiny_clip, tmp_path, monkeypatch):
    import open_clip

    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(tiny_clip.model.state_dict(), path)
    cfg = {"hf_hub": "org/tiny/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "quick_gelu": True}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: cfg if tag == "faketag" else {})
    monkeypatch.setattr(loader, "_cached_tag_file", lambda tag_cfg: str(path))
    got = load_clip("tiny-ViT", "faketag")
    assert got.weights_id == "tiny-ViT/faketag" and not got.is_random
    assert got.mean == (0.5, 0.5, 0.5)  # the tag's preprocessing, not open_clip's default
    assert isinstance(got.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
