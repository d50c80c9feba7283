"""What one training stage is: the modules it trains and evaluates, its step and its folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

Compute = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Stage:
    """What one stage trains: `module` is checkpointed (the teacher network, or the
    distiller holding student + embeddings + memory bank), `classifier` is evaluated,
    `compute` gives (logits, weighted loss terms) for a batch. Under DDP `compute` must
    be an nn.Module holding every trained parameter: it is what DDP wraps."""

    name: str
    module: nn.Module
    classifier: nn.Module
    compute: Compute
    term_names: Sequence[str]
    parameters: list[nn.Parameter]
    folder: Path  # holds checkpoints/ and metrics.csv
    epochs: int
    lr: float
    metrics_comments: Sequence[str] = ()
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> Path:
        return self.folder / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "checkpoints" / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.csv"
