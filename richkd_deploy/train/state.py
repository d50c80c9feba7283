"""What a stage's `last.pt` holds, and putting it back on resume.

The optimiser, scheduler and loss scaler, the epoch and the step inside it, the
metrics history, the best holdout score so far and the generators' states: enough
for a run killed at any moment and resumed from `last.pt` to end bit-identical to an
uninterrupted one on the CPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from richkd_deploy.errors import CheckpointError
from richkd_deploy.recipe import OptimConfig
from richkd_deploy.train import devices
from richkd_deploy.train.log import RunLog
from richkd_deploy.train.stage import Stage

STATE_FORMAT = "richkd-deploy/train-state/1"


def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The stage's lr schedule. "step" is MultiStepLR, stepped once per epoch (the
    papers' schedule); "cosine" is stepped once per batch (`steps_per_batch` says
    which): a linear warm-up from lr/W to lr over the first W = warmup_epochs x
    steps_per_epoch steps, then a cosine from lr down to 0 at the stage's last step."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:  # `step` optimiser steps done: the lr of the next one
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_batch(cfg: OptimConfig) -> bool:
    """Whether the schedule advances after every optimiser step (else after every epoch)."""
    return cfg.schedule == "cosine"


def scaled_lr(lr: float, cfg: OptimConfig, world_size: int) -> float:
    """The learning rate actually used: `optim.lr_scaling: linear` multiplies it by the
    number of processes (the effective batch grows with them), `none` keeps it."""
    return lr * world_size if cfg.lr_scaling == "linear" else lr


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint to resume from; run without --resume") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a readable checkpoint ({first}); delete it and restart the run") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a richkd-deploy training checkpoint; delete it and restart the run")
    return state


class StageState:
    """A stage's resumable state: built fresh, or restored from its `last.pt`."""

    def __init__(self, stage: Stage, cfg: OptimConfig, device: torch.device, world_size: int,
                 steps_per_epoch: int = 1) -> None:
        self.amp = devices.amp_enabled(device, cfg.amp)
        self.optimizer = make_optimizer(stage.parameters, cfg, scaled_lr(stage.lr, cfg, world_size))
        self.scheduler = make_scheduler(self.optimizer, cfg, stage.epochs, steps_per_epoch)
        self.scaler = devices.make_scaler(device, self.amp)
        self.world_size = world_size
        self.epoch = 0  # epochs finished
        self.skip = 0  # batches of epoch `self.epoch` already done (a Ctrl-C mid-epoch)
        self.history: list[dict[str, Any]] = []
        self.best_acc = -1.0  # the selection score of best.pt (holdout top-1)
        self.best_epoch = 0
        self.resume_rng: dict[str, Any] | None = None

    def restore(self, stage: Stage, cfg: OptimConfig, log: RunLog) -> None:
        """Load `stage.last` into the stage's module and this state."""
        state = load_state(stage.last)
        if state.get("stage") != stage.name:
            raise CheckpointError(f"{stage.last}: holds stage {state.get('stage')!r}, not {stage.name!r}")
        try:
            stage.module.load_state_dict(state["module"])
        except RuntimeError as exc:
            raise CheckpointError(f"{stage.last}: does not fit this recipe's models ({str(exc).splitlines()[0]}); "
                                  "resume with the recipe the run started with") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.skip = state["epoch"], state["step_in_epoch"]
        self.history, self.best_acc = list(state["history"]), state["best_acc"]
        self.best_epoch = int(state.get("best_epoch", 0))
        self.resume_rng = state["rng"] if self.skip else None
        log(f"[{stage.name}] resuming at epoch {self.epoch + 1}" + (f", batch {self.skip + 1}" if self.skip else ""))
        check_world_size(stage, cfg, int(state.get("world_size", 1)), self.world_size, log)

    def payload(self, stage: Stage, epoch: int, step: int, rng_state: dict[str, Any] | None) -> dict[str, Any]:
        """What `last.pt` holds after `step` batches of epoch `epoch` (0 at an epoch's end)."""
        return {
            "format": STATE_FORMAT, "stage": stage.name, "epoch": epoch, "step_in_epoch": step,
            "module": stage.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": rng_state or {}, "history": self.history, "best_acc": self.best_acc,
            "best_epoch": self.best_epoch, "world_size": self.world_size, **stage.checkpoint_meta,
        }


def check_world_size(stage: Stage, cfg: OptimConfig, saved: int, now: int, log: RunLog) -> None:
    """Resuming with another number of processes changes the effective batch and the data
    order; with linear lr scaling the restored optimiser would also hold the wrong lr."""
    if saved == now:
        return
    if cfg.lr_scaling == "linear":
        raise CheckpointError(f"{stage.last}: written by {saved} process(es), resumed with {now}; with "
                              f"optim.lr_scaling linear the learning rate would not match; resume with --nproc {saved}")
    log.warn(f"[{stage.name}] the checkpoint was written by {saved} process(es), this run has {now}: the effective "
             "batch and the data order differ from an uninterrupted run")
