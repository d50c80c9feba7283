"""Reproducible DataLoaders.

A run must see the same batches *and the same augmentations* for the same seed,
whether the images are prepared in the main process (num_workers=0, CPU debugging)
or in worker processes (GPU runs). Seeding the workers alone does not give that:
with num_workers=0 the augmentations would draw from the training process's global
RNG, and with workers the draws depend on which worker got which batch.

So the batch sampler tags every batch with a seed derived from (loader seed, batch
number), and the dataset re-seeds torch/numpy/random to it while it prepares that
batch (`seeded_rng`; the caller's RNG state is restored afterwards). The same seed
therefore gives bit-identical batches for any num_workers. Augmentations must draw
from torch's, numpy's or Python's global RNG (ours and torchvision's do).

Datasets of this package (``supports_seeded_batches = True``) read the tag in
`__getitems__`; any other map-style dataset is wrapped in `SeededFetch` by
`make_loader` (torch's Subset has a `__getitems__` that would drop the tag).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    get_worker_info,
)

_MASK64 = (1 << 64) - 1


def mix_seed(a: int, b: int) -> int:
    """A well-spread 63-bit seed from two integers (splitmix64), so batch seeds of
    neighbouring batches or epochs are unrelated."""
    z = (int(a) * 0x9E3779B97F4A7C15 + int(b) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch (CPU), numpy and `random` for the block, then restore their states,
    so preparing a batch never disturbs the caller's random stream. In a DataLoader
    worker nothing else uses those generators, so the (slow, for numpy) save and
    restore is skipped there."""
    in_worker = get_worker_info() is not None
    if not in_worker:
        torch_state = torch.get_rng_state()
        np_state = np.random.get_state()
        py_state = random.getstate()
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would reset CUDA's too
    np.random.seed(seed % (2**32))
    random.seed(seed)
    try:
        yield
    finally:
        if not in_worker:
            torch.set_rng_state(torch_state)
            np.random.set_state(np_state)
            random.setstate(py_state)


class SeededBatch(list):
    """A list of dataset indices carrying the seed its augmentations must use; it is
    pickled to worker processes with the seed attached."""

    seed: int | None = None

    def __init__(self, indices: Sequence[int], seed: int) -> None:
        super().__init__(indices)
        self.seed = seed


def fetch_batch(dataset: Any, indices: Sequence[int]) -> list[Any]:
    """Samples for `indices`, under the batch's seed when it has one."""
    seed = getattr(indices, "seed", None)
    if seed is None:
        return [dataset[i] for i in indices]
    with seeded_rng(seed):
        return [dataset[i] for i in indices]


class SeededBatchSampler(Sampler[list[int]]):
    """Wraps a batch sampler and tags each batch with mix(epoch seed, batch number).
    The epoch seed is drawn from `generator` when iteration starts, so a new
    iteration over the same loader gets fresh augmentations, reproducibly."""

    def __init__(self, batch_sampler: Any, generator: torch.Generator) -> None:
        self.batch_sampler = batch_sampler
        self.generator = generator

    def __iter__(self) -> Iterator[list[int]]:
        epoch_seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        for number, batch in enumerate(self.batch_sampler):
            yield SeededBatch(batch, mix_seed(epoch_seed, number))

    def __len__(self) -> int:
        return len(self.batch_sampler)


class SeededFetch(Dataset):
    """Gives a foreign map-style dataset (e.g. torch Subset) seeded batch fetching;
    attribute reads fall through to the wrapped dataset."""

    supports_seeded_batches = True

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        return fetch_batch(self.dataset, indices)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _worker_init(worker_id: int) -> None:
    """Seed numpy and `random` in each worker too (torch's own seeding covers only
    torch), for code that draws outside a seeded batch."""
    seed = torch.initial_seed()
    np.random.seed(seed % (2**32))
    random.seed(seed)


def make_loader(dataset: Any, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                drop_last: bool = False, sampler: Sampler[int] | None = None, *,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentations are a pure function of `seed`, for
    any `num_workers` (see the module docstring).

    `sampler` (e.g. a DistributedSampler) replaces the shuffling; then `shuffle` must
    be False. Batches are ``(images, labels, indices)`` for this package's datasets.
    Workers persist across iterations of this loader when num_workers > 0.
    """
    if sampler is not None and shuffle:
        raise ValueError("make_loader: pass shuffle=False with a sampler (the sampler decides the order)")
    generator = torch.Generator()
    generator.manual_seed(int(seed) & _MASK64)
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = SeededBatchSampler(BatchSampler(sampler, batch_size, drop_last), generator)
    if not getattr(dataset, "supports_seeded_batches", False):
        dataset = SeededFetch(dataset)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
