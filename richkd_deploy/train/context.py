"""What every stage of one training run shares, in one typed object.

The teacher stage, the student stage and `fit` used to thread the same nine to
fourteen loose parameters through each call (device, log, DDP context, seed, worker
count, resume and quiet flags, the loader factory). They travel together here, so a
new run-wide setting is one field, not one more parameter in three signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from richkd_deploy.data import make_loader
from richkd_deploy.dist import DistContext
from richkd_deploy.train.log import RunLog


@dataclass
class TrainContext:
    """The run-wide settings a stage needs besides its own recipe section.

    `make_loader(dataset, batch_size, shuffle, num_workers, seed, drop_last, sampler)`
    builds an epoch's training loader; `fit` calls it once per epoch with that epoch's
    seed, which makes the data order a pure function of (seed, epoch).
    """

    device: torch.device
    log: RunLog
    seed: int
    num_workers: int = 0
    resume: bool = False
    quiet: bool = False
    dist: DistContext = field(default_factory=DistContext.single)
    make_loader: Callable[..., Any] = make_loader
