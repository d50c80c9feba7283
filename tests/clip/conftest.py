"""Fixtures for the CLIP tests: a tiny random open_clip model (the dataset lives in tests/fakes.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_clip():
    from richkd_deploy.clip.loader import load_clip

    return load_clip("tiny-ViT", "none", allow_random=True, device="cpu")
