"""The multi-prompt zero-shot head against a direct computation, scales, and the saved embeddings."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from richkd_deploy.clip.prompts import (
    ZeroShotHead,
    build_class_embeddings,
    format_class_name,
    load_or_build_text_embeddings,
    resolve_logit_scale,
)
from richkd_deploy.recipe import DEFAULT_TEMPLATES

CLASSES = ["aquarium_fish", "cat", "pickup_truck"]


def test_class_embeddings_equal_direct_computation(tiny_clip):
    templates = DEFAULT_TEMPLATES[:3]
    got = build_class_embeddings(tiny_clip.model, tiny_clip.tokenizer, CLASSES, templates, "spaces", batch=4)
    assert got.shape == (3, 32)
    for k, name in enumerate(CLASSES):
        rows = []
        for t in templates:
            with torch.no_grad():
                e = tiny_clip.model.encode_text(tiny_clip.tokenizer([t.format(name.replace("_", " "))]))[0]
            rows.append(e / e.norm())
        mean = torch.stack(rows).mean(0)
        torch.testing.assert_close(got[k], mean / mean.norm(), atol=1e-5, rtol=1e-5)


def test_name_formats(tiny_clip):
    assert format_class_name("aquarium_fish", "spaces") == "aquarium fish"
    assert format_class_name("aquarium_fish", "raw") == "aquarium_fish"
    spaces = build_class_embeddings(tiny_clip.model, tiny_clip.tokenizer, CLASSES[:1], ["a {}"], "spaces")
    raw = build_class_embeddings(tiny_clip.model, tiny_clip.tokenizer, CLASSES[:1], ["a {}"], "raw")
    assert not torch.allclose(spaces, raw)


def test_head_formula_and_raw_cosine():
    torch.manual_seed(0)
    w = F.normalize(torch.randn(5, 8), dim=1)
    f = torch.randn(7, 8) * 3
    head = ZeroShotHead(w, 1.0)
    logits = head(f)
    assert logits.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(logits, F.cosine_similarity(f[:, None], w[None], dim=-1))
    torch.testing.assert_close(ZeroShotHead(w, 100.0)(f), 100.0 * logits)


def test_logit_scale_resolution(tiny_clip):
    assert resolve_logit_scale("learned", tiny_clip.model) == pytest.approx(tiny_clip.model.logit_scale.exp().item())
    assert resolve_logit_scale("learned", tiny_clip.model) == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip init
    assert resolve_logit_scale(1.0, tiny_clip.model) == 1.0
    assert resolve_logit_scale(100, tiny_clip.model) == 100.0


def test_text_embeddings_saved_once_and_rebuilt_on_change(tiny_clip, tmp_path):
    path = tmp_path / "clip" / "text_embeddings.pt"
    messages: list[str] = []
    first = load_or_build_text_embeddings(tiny_clip, CLASSES, DEFAULT_TEMPLATES, "spaces", path, log=messages.append)
    saved = torch.load(path, weights_only=True)
    assert saved["templates"] == list(DEFAULT_TEMPLATES) and saved["class_names"] == CLASSES
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    stamp = path.stat().st_mtime_ns
    again = load_or_build_text_embeddings(tiny_clip, CLASSES, DEFAULT_TEMPLATES, "spaces", path, log=messages.append)
    assert torch.equal(first, again) and path.stat().st_mtime_ns == stamp and "reused" in messages[-1]
    load_or_build_text_embeddings(tiny_clip, CLASSES, DEFAULT_TEMPLATES[:2], "spaces", path, log=messages.append)
    assert path.stat().st_mtime_ns != stamp and any("rebuilding" in m for m in messages)
    assert torch.load(path, weights_only=True)["templates"] == list(DEFAULT_TEMPLATES[:2])
