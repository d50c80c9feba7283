"""Shared fixtures for the model-zoo tests: the reference JSON and the deterministic fill.

The reference (`cifar_state_dicts.json`) comes from the project's shared folder; a copy
is kept in `tests/models/data/` so a clone checked out without that folder beside it
(CI, a contributor's machine) still runs every state-dict and forward check.
`RICHKD_SHARED` points the tests at another folder holding the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
VENDORED = Path(__file__).resolve().parent / "data"
REFERENCE_NAME = "cifar_state_dicts.json"

_MASK32 = np.uint64(0xFFFFFFFF)


def shared_dir() -> Path:
    if "RICHKD_SHARED" in os.environ:
        return Path(os.environ["RICHKD_SHARED"])
    return DEFAULT_SHARED if (DEFAULT_SHARED / REFERENCE_NAME).is_file() else VENDORED


def hash_uniform(i: int, n: int) -> np.ndarray:
    """u(i, n) of the JSON's `forward_check_recipe`: murmur3 fmix32 of (i*1000003 + j)
    mod 2^32, mapped to [-1, 1) in float64. uint64 arithmetic with an explicit mask
    keeps every product exact (both factors < 2^32)."""
    h = (np.uint64(i * 1000003 % 2**32) + np.arange(n, dtype=np.uint64)) & _MASK32
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _MASK32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _MASK32
    h ^= h >> np.uint64(16)
    return h.astype(np.float64) / 2.0**32 * 2.0 - 1.0


def fill_entry(i: int, key: str, shape: list[int]) -> torch.Tensor:
    """The value the recipe assigns to state_dict entry number `i`."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    n = int(np.prod(shape)) if shape else 1
    u = hash_uniform(i, n).reshape(shape)
    if len(shape) >= 2:
        value = u * np.sqrt(4.5 / (n / shape[0]))
    elif key.endswith("running_var"):
        value = 1.0 + 0.2 * u
    elif key.endswith("weight"):
        value = 1.0 + 0.1 * u
    elif key.endswith("bias") or key.endswith("running_mean"):
        value = 0.01 * u
    else:  # pragma: no cover -- the JSON has no other kinds of entries
        raise AssertionError(f"no fill rule for {key}")
    return torch.from_numpy(value.astype(np.float32))


def deterministic_state_dict(entries: list[list[Any]]) -> dict[str, torch.Tensor]:
    """Fill every entry of the JSON's ordered (key, shape) list by its position."""
    return {key: fill_entry(i, key, shape) for i, (key, shape) in enumerate(entries)}


def reference_input() -> torch.Tensor:
    return torch.from_numpy(hash_uniform(999999, 6144).reshape(2, 3, 32, 32).astype(np.float32))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Batch-2 CIFAR forwards are too small to gain from intra-op threads, and on a
    busy 2-core machine the thread hand-offs cost more than the maths; restored after
    each module so other test folders keep the default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def optional_reference() -> dict[str, Any] | None:
    path = shared_dir() / REFERENCE_NAME
    return json.loads(path.read_text()) if path.is_file() else None


@pytest.fixture(scope="session")
def reference(optional_reference: dict[str, Any] | None) -> dict[str, Any]:
    if optional_reference is None:
        path = shared_dir() / REFERENCE_NAME
        pytest.skip(f"reference {path} not found (set RICHKD_SHARED to the folder holding {REFERENCE_NAME})")
    return optional_reference


@pytest.fixture(scope="session")
def reference_models(reference: dict[str, Any]) -> dict[str, Any]:
    return reference["models"]


@pytest.fixture
def uniform() -> Callable[[int, int], np.ndarray]:
    return hash_uniform


@pytest.fixture
def fill() -> Callable[[list[list[Any]]], dict[str, torch.Tensor]]:
    return deterministic_state_dict


@pytest.fixture
def fixed_input() -> torch.Tensor:
    return reference_input()
