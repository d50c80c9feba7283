"""Random-number state, so a resumed run continues exactly where it stopped.

Every epoch is re-seeded from (recipe seed, stage, epoch), which makes an epoch
boundary a clean restart point. Mid-epoch checkpoints (Ctrl-C) also save the
generators' states at the interruption. States are stored as tensors and plain
lists so checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    digest = hashlib.sha256(f"{seed}/{stage}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def find_generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """torch.Generator attributes anywhere in a module tree (e.g. CRD's negative sampler)."""
    found: dict[str, torch.Generator] = {}
    for name, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if isinstance(value, torch.Generator):
                found[f"{name}.{attr}" if name else attr] = value
    return found


def capture(module: torch.nn.Module | None = None) -> dict[str, Any]:
    py_state = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in find_generators(module).items()} if module is not None else {},
    }
    return state


def restore(state: dict[str, Any], module: torch.nn.Module | None = None) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if module is not None:
        gens = find_generators(module)
        for key, gen_state in state.get("generators", {}).items():
            if key in gens:
                gens[key].set_state(gen_state)


def reseed_generators(module: torch.nn.Module, seed: int) -> None:
    for i, (_, gen) in enumerate(sorted(find_generators(module).items())):
        gen.manual_seed(seed + 7919 * (i + 1))
