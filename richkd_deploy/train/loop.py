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

import csv
import io
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from richkd_deploy import faults
from richkd_deploy.errors import CheckpointError, RichKDError
from richkd_deploy.recipe import OptimConfig
from richkd_deploy.runs import atomic_write, atomic_write_text
from richkd_deploy.train import devices, rng
from richkd_deploy.train.dist import DistContext
from richkd_deploy.train.log import RunLog

STATE_FORMAT = "richkd-deploy/train-state/1"

Compute = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class TrainingInterrupted(RichKDError):
    """Ctrl-C: a checkpoint was saved; the message says how to resume."""

    exit_code = 130


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


class StopRequest:
    """SIGINT (Ctrl-C) as a flag that the loop reads between steps, not an exception
    raised wherever the step happens to be. A second Ctrl-C more than a second after the
    first interrupts at once (a stuck step). Under DDP the flag is agreed on by all
    ranks, so they stop after the same step and rank 0's checkpoint is of that step
    (torchrun passes the Ctrl-C to every worker, and stops them all)."""

    def __init__(self, dist: DistContext) -> None:
        self.dist = dist
        self.since: float | None = None
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.since is not None and time.monotonic() - self.since > 1.0:
            raise KeyboardInterrupt
        self.since = self.since or time.monotonic()

    def check(self) -> None:
        """Raise KeyboardInterrupt here if any rank was asked to stop."""
        requested = self.since is not None
        if self.dist.enabled:
            requested = self.dist.reduce_sums([float(requested)])[0] > 0
        if requested:
            raise KeyboardInterrupt


def save_torch(obj: Any, path: Path) -> None:
    """torch.save through the atomic writer: the previous file survives any failure."""
    atomic_write(path, lambda f: torch.save(obj, f))


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


def _metrics_csv(comments: Sequence[str], columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    for line in comments:
        buf.write(f"# {line}\n")
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def scaled_lr(lr: float, cfg: OptimConfig, world_size: int) -> float:
    """The learning rate actually used: `optim.lr_scaling: linear` multiplies it by the
    number of processes (the effective batch grows with them), `none` keeps it."""
    return lr * world_size if cfg.lr_scaling == "linear" else lr


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


def fit(stage: Stage, cfg: OptimConfig, train_ds: Any, test_loader: Any, make_loader: Callable[..., Any],
        device: torch.device, seed: int, num_workers: int, log: RunLog, resume: bool, quiet: bool,
        dist: DistContext | None = None) -> dict[str, Any]:
    """Train `stage` for its epochs and return the final metrics row.

    `make_loader(dataset, batch_size, shuffle, num_workers, seed, drop_last, sampler)`
    builds the epoch's training loader; it is called once per epoch with that epoch's
    seed, which makes the data order a pure function of (seed, epoch).
    """
    dist = dist or DistContext.single()
    amp = devices.amp_enabled(device, cfg.amp)
    optimizer = make_optimizer(stage.parameters, cfg, scaled_lr(stage.lr, cfg, dist.world_size))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    scaler = devices.make_scaler(device, amp)
    columns = ["epoch", "lr", "train_loss", "train_acc", *stage.term_names, "test_loss", "test_acc", "seconds"]

    start_epoch, skip_batches, history, best_acc = 0, 0, [], -1.0
    resume_rng: dict[str, Any] | None = None
    if resume and stage.last.exists():
        state = load_state(stage.last)
        if state.get("stage") != stage.name:
            raise CheckpointError(f"{stage.last}: holds stage {state.get('stage')!r}, not {stage.name!r}")
        try:
            stage.module.load_state_dict(state["module"])
        except RuntimeError as exc:
            raise CheckpointError(f"{stage.last}: does not fit this recipe's models ({str(exc).splitlines()[0]}); "
                                  "resume with the recipe the run started with") from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, skip_batches = state["epoch"], state["step_in_epoch"]
        history, best_acc = list(state["history"]), state["best_acc"]
        resume_rng = state["rng"] if skip_batches else None
        log(f"[{stage.name}] resuming at epoch {start_epoch + 1}" + (f", batch {skip_batches + 1}" if skip_batches else ""))
        _check_world_size(stage, cfg, int(state.get("world_size", 1)), dist.world_size, log)
    _to_channels_last(stage, cfg)
    net = _wrap_for_ddp(stage, cfg, device, dist, log)  # after the load: DDP starts from rank 0's weights
    net = _compiled(stage, net, cfg, log)

    def checkpoint(epoch: int, step: int, rng_state: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT, "stage": stage.name, "epoch": epoch, "step_in_epoch": step,
            "module": stage.module.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_state or {}, "history": history, "best_acc": best_acc, "world_size": dist.world_size,
            **stage.checkpoint_meta,
        }

    row: dict[str, Any] = history[-1] if history else {}
    with StopRequest(dist) as stop:
        for epoch in range(start_epoch, stage.epochs):
            t0 = time.perf_counter()
            s = rng.epoch_seed(seed, stage.name, epoch)
            rng.seed_everything(s)  # the same on every rank: dropout-free models, identical initialisation
            rng.reseed_generators(stage.module, _rank_seed(s, dist.rank))  # CRD negatives: a stream per rank
            # The epoch's seed reaches the sampler (its permutation), so resume replays the order.
            sampler = dist.sampler(train_ds, seed=s)
            drop_last = len(train_ds) >= 2 * cfg.batch_size * dist.world_size
            loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=False, num_workers=num_workers,
                                 seed=s, drop_last=drop_last, sampler=sampler)
            stage.module.train()
            if isinstance(net, nn.Module):
                net.train()
            sums = {name: 0.0 for name in ("loss", *stage.term_names)}
            correct, seen, step = 0, 0, 0
            bar = tqdm(total=len(loader), desc=f"{stage.name} {epoch + 1}/{stage.epochs}", leave=False,
                       disable=quiet or not dist.is_main, dynamic_ncols=True)
            iterator = iter(loader)
            try:
                stop.check()  # a Ctrl-C during the last evaluation or checkpoint
                if skip_batches:
                    for _ in range(skip_batches):  # replay the data order (and augmentation RNG) up to the stop
                        next(iterator)
                        bar.update(1)
                    step, skip_batches = skip_batches, 0
                    if resume_rng is not None:
                        rng.restore(resume_rng, stage.module)  # rank 0's states: give the others their own stream
                        if dist.rank:
                            rng.reseed_generators(stage.module, _rank_seed(s + step, dist.rank))
                for images, labels, indices in iterator:
                    images = images.to(device, non_blocking=True)
                    labels = labels.to(device, non_blocking=True)
                    indices = indices.to(device, non_blocking=True)
                    if cfg.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    with devices.autocast(device, amp):
                        logits, terms = net(images, labels, indices)
                    loss = sum(terms.values())
                    if not torch.isfinite(loss):
                        raise RichKDError(f"[{stage.name}] loss became {loss.item()} at epoch {epoch + 1}; "
                                          "lower optim.lr or check the data")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    step += 1
                    n = labels.numel()
                    seen += n
                    correct += (logits.detach().argmax(1) == labels).sum().item()
                    sums["loss"] += loss.item() * n
                    for name, value in terms.items():
                        sums[name] += value.item() * n
                    bar.set_postfix({k: f"{v / max(seen, 1):.3f}" for k, v in sums.items()}
                                    | {"acc": f"{correct / seen:.3f}"}, refresh=False)
                    bar.update(1)
                    faults.pause(f"step:{stage.name}")
                    stop.check()
            except KeyboardInterrupt:
                bar.close()
                if dist.is_main:
                    save_torch(checkpoint(epoch, step, rng.capture(stage.module)), stage.last)
                raise TrainingInterrupted(f"interrupted at {stage.name} epoch {epoch + 1}, batch {step}; checkpoint "
                                          f"saved to {stage.last}; continue with --resume") from None
            bar.close()
            scheduler.step()
            stats = dist.reduce_sums([sums[k] for k in sums] + [float(correct), float(seen)])
            seen_all = max(stats[-1], 1.0)
            # Rank 0 evaluates (the model is the same everywhere); the broadcast is the others' barrier.
            test_loss, test_acc = (evaluate(stage.classifier, test_loader, device, amp, cfg.channels_last)[:2]
                                   if dist.is_main else (0.0, 0.0))
            test_loss, test_acc = dist.broadcast([test_loss, test_acc])
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": stats[0] / seen_all, "train_acc": stats[-2] / seen_all,
                   **{name: stats[1 + i] / seen_all for i, name in enumerate(stage.term_names)},
                   "test_loss": test_loss, "test_acc": test_acc, "seconds": time.perf_counter() - t0}
            history.append(row)
            improved = test_acc > best_acc
            best_acc = max(best_acc, test_acc)
            if dist.is_main:
                atomic_write_text(stage.metrics, _metrics_csv(stage.metrics_comments, columns, history))
                save_torch(checkpoint(epoch + 1, 0, None), stage.last)
                if improved:
                    save_torch({"format": "richkd-deploy/best/1", "model": _classifier_state(stage.classifier),
                                "epoch": epoch + 1, "test_acc": test_acc, **stage.checkpoint_meta}, stage.best)
            terms_txt = " ".join(f"{k}={row[k]:.4f}" for k in stage.term_names)
            log(f"[{stage.name}] epoch {epoch + 1}/{stage.epochs} loss={row['train_loss']:.4f} {terms_txt} "
                f"train_acc={row['train_acc']:.4f} test_acc={test_acc:.4f} ({row['seconds']:.1f}s)")
            if not math.isfinite(row["train_loss"]):
                raise RichKDError(f"[{stage.name}] training diverged; lower optim.lr")
        try:
            stop.check()  # a Ctrl-C during the last epoch's evaluation: its checkpoint is already saved
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"interrupted after {stage.name} epoch {stage.epochs}; checkpoint saved to "
                                      f"{stage.last}; continue with --resume") from None
    return row


def _rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps `seed` (single-process runs are unchanged); other ranks get their own."""
    return seed + 104_729 * rank


def _check_world_size(stage: Stage, cfg: OptimConfig, saved: int, now: int, log: RunLog) -> None:
    """Resuming with another number of processes changes the effective batch and the data
    order; with linear lr scaling the restored optimiser would also hold the wrong lr."""
    if saved == now:
        return
    if cfg.lr_scaling == "linear":
        raise CheckpointError(f"{stage.last}: written by {saved} process(es), resumed with {now}; with "
                              f"optim.lr_scaling linear the learning rate would not match; resume with --nproc {saved}")
    log.warn(f"[{stage.name}] the checkpoint was written by {saved} process(es), this run has {now}: the effective "
             "batch and the data order differ from an uninterrupted run")


def _classifier_state(classifier: nn.Module) -> dict[str, torch.Tensor]:
    module = getattr(classifier, "module", classifier)  # unwrap DDP
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}
