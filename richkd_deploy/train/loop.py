"""The epoch loop shared by the teacher and the student stage.

One loop, parametrised by a `Stage`, so checkpointing, resume, AMP, logging and
Ctrl-C handling are written once. The loop knows nothing about distillation: the
stage's `compute` returns the student logits and named, already weighted loss
terms, and the loop sums, back-propagates and logs them.

Resume contract: every epoch starts from a seed derived from (recipe seed, stage,
epoch) and `last.pt` is written atomically at the end of every epoch, so a run killed
at any moment and resumed from `last.pt` ends with exactly the weights of an
uninterrupted run on the CPU. A Ctrl-C additionally saves a mid-epoch checkpoint
that records how many batches were done; resume replays the epoch's data order,
skips those batches and restores the generators' states at the interruption. The
Ctrl-C takes effect at the next step boundary (`StopRequest`): a step cut after its
forward has already moved the BatchNorm statistics, which the resumed run would then
move again for the same batch.

DDP (torchrun): `stage.compute` runs wrapped in DistributedDataParallel, every rank
takes its share of the same seeded epoch permutation (`DistContext.sampler`), the
metrics are summed over the ranks, rank 0 alone evaluates on the test set and
writes checkpoints and metrics.csv, and every rank resumes from the same `last.pt`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from richkd_deploy import faults
from richkd_deploy.dist import DistContext
from richkd_deploy.errors import RichKDError
from richkd_deploy.models import save_checkpoint
from richkd_deploy.recipe import OptimConfig
from richkd_deploy.train import devices, rng
from richkd_deploy.train.context import TrainContext
from richkd_deploy.train.log import RunLog
from richkd_deploy.train.metrics import MetricsWriter
from richkd_deploy.train.stage import Compute, Stage
from richkd_deploy.train.state import (  # noqa: F401 - re-exported: the loop's public face
    STATE_FORMAT,
    StageState,
    load_state,
    make_optimizer,
    scaled_lr,
    steps_per_batch,
)
from richkd_deploy.train.state import check_world_size as _check_world_size  # noqa: F401
from richkd_deploy.train.stop import StopRequest


class TrainingInterrupted(RichKDError):
    """Ctrl-C: a checkpoint was saved; the message says how to resume."""

    exit_code = 130


@torch.no_grad()
def evaluate(classifier: nn.Module, loader: Any, device: torch.device, amp: bool,
             channels_last: bool = False) -> tuple[float, float, int]:
    """Mean CE and top-1 of a classifier over a loader (clean test images)."""
    was_training = classifier.training
    classifier.eval()
    total_loss, correct, count = 0.0, 0, 0
    for batch in loader:
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with devices.autocast(device, amp):
            logits = classifier(images)[0]
        logits = logits.float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += labels.numel()
    classifier.train(was_training)
    if count == 0:
        raise RichKDError("the test set is empty; check data.test_limit")
    return total_loss / count, correct / count, count


def _wrap_for_ddp(stage: Stage, cfg: OptimConfig, device: torch.device, dist: DistContext, log: RunLog) -> Compute:
    """`stage.compute` in DistributedDataParallel (as is for one process)."""
    if not dist.enabled:
        return stage.compute
    if not isinstance(stage.compute, nn.Module):
        raise TypeError(f"stage {stage.name}: under DDP, Stage.compute must be an nn.Module")
    sync_bn = cfg.sync_bn
    if sync_bn and device.type != "cuda":
        log.warn("optim.sync_bn is ignored on the CPU (SyncBatchNorm needs CUDA): "
                 "BatchNorm statistics stay per process")
        sync_bn = False
    return dist.wrap(stage.compute, device, sync_bn=sync_bn)


def _to_channels_last(stage: Stage, cfg: OptimConfig) -> None:
    """`optim.channels_last` converts the weights as well as the inputs (inputs alone in
    NHWC would make every convolution transpose them back); before any DDP wrapping, so
    DDP's gradient buckets are laid out for the converted parameters."""
    if cfg.channels_last and isinstance(stage.compute, nn.Module):
        stage.compute.to(memory_format=torch.channels_last)


def _compiled(stage: Stage, net: Compute, cfg: OptimConfig, log: RunLog) -> Compute:
    """`optim.compile` compiles the whole step's forward (student, frozen teacher and
    loss terms together), around DDP where there is DDP. Off by default: it pays off on
    GPUs and costs a minute or more at the first step."""
    if not cfg.compile:
        return net
    log(f"[{stage.name}] optim.compile: compiling the training step (the first batches are slow)")
    return torch.compile(net)


@dataclass
class _Epoch:
    """One epoch's running sums on this rank."""

    sums: dict[str, float]
    correct: int = 0
    seen: int = 0
    step: int = 0


class _StageRun:
    """One call of `fit`: the stage, its state, the (wrapped) step and where rows go."""

    def __init__(self, stage: Stage, cfg: OptimConfig, ctx: TrainContext, train_ds: Any, test_loader: Any,
                 holdout_loader: Any | None = None) -> None:
        self.stage, self.cfg, self.ctx = stage, cfg, ctx
        self.train_ds, self.test_loader, self.holdout_loader = train_ds, test_loader, holdout_loader
        self.state = StageState(stage, cfg, ctx.device, ctx.dist.world_size, steps_per_epoch=len(self.loader(0)))
        self.per_batch = steps_per_batch(cfg)
        if ctx.resume and stage.last.exists():
            self.state.restore(stage, cfg, ctx.log)
        _to_channels_last(stage, cfg)
        net = _wrap_for_ddp(stage, cfg, ctx.device, ctx.dist, ctx.log)  # after the load: DDP starts from rank 0
        self.net = _compiled(stage, net, cfg, ctx.log)
        columns = ["epoch", "lr", "train_loss", "train_acc", *stage.term_names, "test_loss", "test_acc", "seconds"]
        if holdout_loader is not None:
            columns += ["holdout_loss", "holdout_acc", "best_epoch"]
        self.metrics = MetricsWriter(stage.metrics, columns, stage.metrics_comments, first_epoch=self.state.epoch + 1)

    def loader(self, seed: int) -> Any:
        """The epoch's training loader; the epoch's seed reaches the sampler (its
        permutation), so resume replays the order."""
        cfg, dist = self.cfg, self.ctx.dist
        sampler = dist.sampler(self.train_ds, seed=seed)
        drop_last = len(self.train_ds) >= 2 * cfg.batch_size * dist.world_size
        return self.ctx.make_loader(self.train_ds, batch_size=cfg.batch_size, shuffle=False,
                                    num_workers=self.ctx.num_workers, seed=seed, drop_last=drop_last, sampler=sampler)

    def train_epoch(self, epoch: int, stop: StopRequest) -> _Epoch:
        """Run one epoch's steps (from a mid-epoch resume point if there is one)."""
        stage, ctx, state = self.stage, self.ctx, self.state
        s = rng.epoch_seed(ctx.seed, stage.name, epoch)
        rng.seed_everything(s)  # the same on every rank: dropout-free models, identical initialisation
        rng.reseed_generators(stage.module, _rank_seed(s, ctx.dist.rank))  # CRD negatives: a stream per rank
        loader = self.loader(s)
        stage.module.train()
        if isinstance(self.net, nn.Module):
            self.net.train()
        run = _Epoch(sums={name: 0.0 for name in ("loss", *stage.term_names)})
        bar = tqdm(total=len(loader), desc=f"{stage.name} {epoch + 1}/{stage.epochs}", leave=False,
                   disable=ctx.quiet or not ctx.dist.is_main, dynamic_ncols=True)
        iterator = iter(loader)
        try:
            stop.check()  # a Ctrl-C during the last evaluation or checkpoint
            if state.skip:
                self._skip_to_resume_point(iterator, bar, run, s)
            for images, labels, indices in iterator:
                self._step(images, labels, indices, epoch, run)
                bar.set_postfix({k: f"{v / max(run.seen, 1):.3f}" for k, v in run.sums.items()}
                                | {"acc": f"{run.correct / run.seen:.3f}"}, refresh=False)
                bar.update(1)
                faults.pause(f"step:{stage.name}")
                stop.check()
        except KeyboardInterrupt:
            bar.close()
            if ctx.dist.is_main:
                save_checkpoint(state.payload(stage, epoch, run.step, rng.capture(stage.module)), stage.last)
            raise TrainingInterrupted(f"interrupted at {stage.name} epoch {epoch + 1}, batch {run.step}; checkpoint "
                                      f"saved to {stage.last}; continue with --resume") from None
        bar.close()
        return run

    def _skip_to_resume_point(self, iterator: Any, bar: Any, run: _Epoch, seed: int) -> None:
        """Replay the data order (and augmentation RNG) up to a Ctrl-C's stop, then put
        back the generators' states of that moment."""
        state, dist = self.state, self.ctx.dist
        for _ in range(state.skip):
            next(iterator)
            bar.update(1)
        run.step, state.skip = state.skip, 0
        if state.resume_rng is not None:
            rng.restore(state.resume_rng, self.stage.module)  # rank 0's states: give the others their own stream
            if dist.rank:
                rng.reseed_generators(self.stage.module, _rank_seed(seed + run.step, dist.rank))

    def _step(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, epoch: int,
              run: _Epoch) -> None:
        device, cfg, state = self.ctx.device, self.cfg, self.state
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        indices = indices.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with devices.autocast(device, state.amp):
            logits, terms = self.net(images, labels, indices)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise RichKDError(f"[{self.stage.name}] loss became {loss.item()} at epoch {epoch + 1}; "
                              "lower optim.lr or check the data")
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if self.per_batch:
            state.scheduler.step()
        run.step += 1
        n = labels.numel()
        run.seen += n
        run.correct += (logits.detach().argmax(1) == labels).sum().item()
        run.sums["loss"] += loss.item() * n
        for name, value in terms.items():
            run.sums[name] += value.item() * n

    def _evaluate(self, loader: Any) -> tuple[float, float]:
        """Rank 0 evaluates (the model is the same everywhere); the broadcast is the others' barrier."""
        dist = self.ctx.dist
        loss, acc = (evaluate(self.stage.classifier, loader, self.ctx.device, self.state.amp,
                              self.cfg.channels_last)[:2] if dist.is_main else (0.0, 0.0))
        return tuple(dist.broadcast([loss, acc]))  # type: ignore[return-value]

    def end_epoch(self, epoch: int, run: _Epoch, t0: float) -> dict[str, Any]:
        """Reduce the epoch's sums, evaluate, write metrics and checkpoints, log the row."""
        stage, state, dist = self.stage, self.state, self.ctx.dist
        if not self.per_batch:
            state.scheduler.step()
        stats = dist.reduce_sums([run.sums[k] for k in run.sums] + [float(run.correct), float(run.seen)])
        seen_all = max(stats[-1], 1.0)
        test_loss, test_acc = self._evaluate(self.test_loader)
        row = {"epoch": epoch + 1, "lr": state.optimizer.param_groups[0]["lr"],
               "train_loss": stats[0] / seen_all, "train_acc": stats[-2] / seen_all,
               **{name: stats[1 + i] / seen_all for i, name in enumerate(stage.term_names)},
               "test_loss": test_loss, "test_acc": test_acc}
        improved = self._select(epoch, row)
        row["seconds"] = time.perf_counter() - t0
        state.history.append(row)
        if dist.is_main:  # best.pt before last.pt: a kill between them redoes the epoch, and the same choice
            self.metrics.write(state.history, state.best_epoch)
            if improved:
                save_checkpoint({"format": "richkd-deploy/best/1", "model": _classifier_state(stage.classifier),
                                 "epoch": epoch + 1, "test_acc": test_acc, "holdout_acc": row.get("holdout_acc"),
                                 **stage.checkpoint_meta}, stage.best)
            save_checkpoint(state.payload(stage, epoch + 1, 0, None), stage.last)
        self._log_row(row)
        if not math.isfinite(row["train_loss"]):
            raise RichKDError(f"[{stage.name}] training diverged; lower optim.lr")
        return row

    def _select(self, epoch: int, row: dict[str, Any]) -> bool:
        """Score the epoch on the holdout split (never the test set) and say whether it
        becomes best.pt. Without a holdout split there is nothing to select on: best.pt
        follows the last epoch."""
        state = self.state
        if self.holdout_loader is None:
            state.best_epoch = epoch + 1
            return True
        row["holdout_loss"], row["holdout_acc"] = self._evaluate(self.holdout_loader)
        improved = row["holdout_acc"] > state.best_acc  # a tie keeps the earlier epoch
        if improved:
            state.best_acc, state.best_epoch = row["holdout_acc"], epoch + 1
        row["best_epoch"] = state.best_epoch
        return improved

    def _log_row(self, row: dict[str, Any]) -> None:
        stage = self.stage
        terms_txt = " ".join(f"{k}={row[k]:.4f}" for k in stage.term_names)
        holdout = (f" holdout_acc={row['holdout_acc']:.4f} (best epoch {row['best_epoch']}: "
                   f"{self.state.best_acc:.4f})" if "holdout_acc" in row else "")
        self.ctx.log(f"[{stage.name}] epoch {row['epoch']}/{stage.epochs} loss={row['train_loss']:.4f} {terms_txt} "
                     f"train_acc={row['train_acc']:.4f} test_acc={row['test_acc']:.4f}{holdout} "
                     f"({row['seconds']:.1f}s)")


@dataclass
class FitResult:
    """How a stage ended: the last epoch's metrics row, and the row of the epoch best.pt
    holds (the best holdout top-1; the last epoch when there is no holdout split)."""

    last: dict[str, Any]
    best: dict[str, Any]
    selected_on_holdout: bool


def fit(stage: Stage, cfg: OptimConfig, ctx: TrainContext, train_ds: Any, test_loader: Any,
        holdout_loader: Any | None = None) -> FitResult:
    """Train `stage` for its epochs (from its `last.pt` when `ctx.resume`). With a
    `holdout_loader`, every epoch is also scored on it and best.pt keeps the best one."""
    run = _StageRun(stage, cfg, ctx, train_ds, test_loader, holdout_loader)
    row: dict[str, Any] = run.state.history[-1] if run.state.history else {}
    with StopRequest(ctx.dist) as stop:
        try:
            for epoch in range(run.state.epoch, stage.epochs):
                t0 = time.perf_counter()
                row = run.end_epoch(epoch, run.train_epoch(epoch, stop), t0)
        finally:
            run.metrics.close()
        try:
            stop.check()  # a Ctrl-C during the last epoch's evaluation: its checkpoint is already saved
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"interrupted after {stage.name} epoch {stage.epochs}; checkpoint saved to "
                                      f"{stage.last}; continue with --resume") from None
    history, best_epoch = run.state.history, run.state.best_epoch
    best = history[best_epoch - 1] if 0 < best_epoch <= len(history) else row
    return FitResult(last=row, best=best, selected_on_holdout=holdout_loader is not None)


def _rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps `seed` (single-process runs are unchanged); other ranks get their own."""
    return seed + 104_729 * rank


def _classifier_state(classifier: nn.Module) -> dict[str, torch.Tensor]:
    module = getattr(classifier, "module", classifier)  # unwrap DDP
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}
