"""Process-group facts in one object, so the training code asks `dist.is_main`
instead of scattering `torch.distributed` calls. A single process is the degenerate
case (world size 1) and needs no process group.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def single(cls) -> DistContext:
        return cls()

    @classmethod
    def from_env(cls, device_type: str, timeout_s: int = 600) -> DistContext:
        """Join the process group torchrun describes in the environment (or none)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not tdist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(local)
            tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sampler(self, dataset: Any, seed: int) -> Any:
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed,
                                  drop_last=False)

    def reduce_sums(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        device = torch.device("cuda", self.local_rank) if tdist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        tdist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

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
