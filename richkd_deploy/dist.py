"""Process-group facts in one object, so training and validation ask `dist.is_main`
instead of scattering `torch.distributed` calls. A single process is the degenerate
case (world size 1) and needs no process group.

torchrun describes the job in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT); `from_env` joins it with nccl on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

TIMEOUT_ENV = "RICHKD_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600


def default_timeout_s() -> int:
    """How long a collective may wait for a missing rank before it fails (seconds).

    torchrun stops every worker as soon as one exits non-zero, so this only matters
    for a rank that hangs without exiting; tests lower it through RICHKD_DIST_TIMEOUT_S.
    Waits that are not collectives (others polling for rank 0's CLIP cache) have their
    own, longer timeout.
    """
    raw = os.environ.get(TIMEOUT_ENV, "")
    return int(raw) if raw.strip() else DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def single(cls) -> DistContext:
        return cls()

    @classmethod
    def from_env(cls, device_type: str, timeout_s: int | None = None) -> DistContext:
        """Join the process group torchrun describes in the environment (or none)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not tdist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(local)
            timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else default_timeout_s())
            tdist.init_process_group(backend=backend, timeout=timeout)
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sampler(self, dataset: Any, seed: int) -> Any:
        """This rank's share of a shuffled epoch; `seed` is the epoch's seed, so the order
        is a pure function of (recipe seed, stage, epoch) and resume replays it.

        Used for a single process too (num_replicas=1): rank r of N gets perm[r::N] of the
        same permutation, so the union of the ranks' k-th batches is exactly the k-th batch
        of one process with N times the batch, and 1 x 64 trains like 2 x 32.
        drop_last=True trims the at most N-1 samples that do not divide evenly instead of
        repeating some: every rank then has the same number of samples (equal batches for
        all_gather) and no image appears twice in one gathered CRD memory update.
        """
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed,
                                  drop_last=True)

    def wrap(self, module: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
        """`module` in DistributedDataParallel (unchanged for a single process).

        broadcast_buffers=False (forward_sync_buffers=False in newer torch): DDP would
        otherwise copy rank 0's buffers to every rank before each forward, i.e. the CRD
        memory banks (tens of MB) every step; they are kept identical by gathering the
        update instead, and BatchNorm statistics stay per rank (rank 0's are the ones
        saved) unless `sync_bn` makes them global.
        `sync_bn` converts BatchNorm layers in place (the parameter and buffer objects are
        kept, so an optimiser built on them stays valid); SyncBatchNorm runs on CUDA only.
        """
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        if sync_bn:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        # Newer torch renames the flag (the init-time sync, harmless here, stays either way).
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
        return DistributedDataParallel(module, device_ids=ids, **no_sync)

    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if tdist.get_backend() == "nccl" else torch.device("cpu")

    def reduce_sums(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        tdist.all_reduce(t)
        return t.tolist()

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's `values` on every rank (the others pass placeholders of the same length)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        tdist.broadcast(t, src=0)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others do (downloads into a shared cache), so
        they find its result instead of racing it. If rank 0 fails inside, it exits and
        torchrun stops the others, which are waiting at the barrier."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate a tensor from all ranks along dim 0, in rank order (same shape everywhere)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        tdist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, 0)

    def close(self) -> None:
        if self.enabled and tdist.is_initialized():
            tdist.destroy_process_group()
