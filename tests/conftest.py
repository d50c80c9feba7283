"""Suite-wide settings: no network, few threads, and the repository paths."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def smoke_recipe() -> Path:
    return RECIPES / "smoke.yaml"
