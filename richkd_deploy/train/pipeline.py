"""`richkd-deploy train`: the teacher stage, the CLIP stage and the student stage.

The stages are ordered so that the expensive, reusable results (a trained teacher,
the CLIP cache) are written to the run folder before the student starts, and a
resumed run picks them up instead of redoing them.

Under DDP (torchrun) every rank runs this same code: rank 0 alone writes files
(teacher.pt, the CLIP cache, checkpoints, student.pt, train.log) and measures the
teacher's and CLIP's accuracy; the others wait for it (a barrier, or polling for the
CLIP cache) and then read the same files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from richkd_deploy import __version__, data, distill, models
from richkd_deploy import recipe as recipe_mod
from richkd_deploy.clip import prepare_clip_targets
from richkd_deploy.data.for_recipe import RecipeDatasets as Datasets
from richkd_deploy.data.for_recipe import build_recipe_datasets
from richkd_deploy.dist import DistContext
from richkd_deploy.errors import CheckpointError, RunError
from richkd_deploy.models import pretrained
from richkd_deploy.models.for_recipe import check_architectures
from richkd_deploy.recipe import Recipe
from richkd_deploy.runs import DEFAULT_RUNS_ROOT, RunDir, atomic_write_text, check_writable, run_lock
from richkd_deploy.student import STUDENT_FORMAT
from richkd_deploy.train import devices, rng
from richkd_deploy.train.context import TrainContext
from richkd_deploy.train.log import RunLog
from richkd_deploy.train.loop import FitResult, Stage, evaluate, fit, scaled_lr
from richkd_deploy.train.teacher_targets import TeacherTargets, build_teacher_targets, should_cache

TEACHER_FORMAT = "richkd-deploy/teacher/1"
CHECKPOINT_CACHE = Path.home() / ".cache" / "richkd-deploy" / "checkpoints"


def run_dir_for(recipe: Recipe, run_dir: Path | None) -> RunDir:
    return RunDir(Path(run_dir) if run_dir is not None else DEFAULT_RUNS_ROOT / recipe.name)


def _prepare_run_folder(recipe: Recipe, run: RunDir, resume: bool, force: bool) -> None:
    started = run.recipe.exists() and (run.last.exists() or run.student.exists() or
                                       (run.teacher_dir / "checkpoints" / "last.pt").exists())
    if started and not (resume or force):
        raise RunError(f"{run.root} already holds a run; pass --resume to continue it, --force to start over, "
                       "or --run-dir for a new folder")
    if resume and run.recipe.exists():
        previous = recipe_mod.load(run.recipe)
        changed = _changed_keys(previous.to_dict(), recipe.to_dict())
        changed = [k for k in changed if k not in ("source",) and not k.startswith("optim.epochs")]
        if changed:
            raise RunError(f"cannot resume {run.root}: the recipe changed since the run started ({', '.join(changed[:5])}); "
                           "resume with the same recipe, or pass --force to start over")
    if force and not resume:
        for path in (run.last, run.best, run.student, run.teacher_dir / "checkpoints" / "last.pt", run.teacher):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    atomic_write_text(run.recipe, recipe.to_yaml())


def _changed_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _changed_keys(va, vb, path + ".")
        elif va != vb:
            keys.append(path)
    return keys


class CEStep(nn.Module):
    """The teacher stage's compute: CE on the model's logits. A module (not a closure)
    so DDP can wrap it; it holds the model as its only submodule."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        logits, _ = self.model(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}


def _loader(ds: Any, recipe: Recipe, batch_size: int | None = None) -> Any:
    return data.make_loader(ds, batch_size=batch_size or recipe.validate.batch_size, shuffle=False,
                            num_workers=recipe.data.num_workers, seed=recipe.seed)


def load_teacher_weights(recipe: Recipe, teacher: nn.Module, log: RunLog) -> str:
    """Load a teacher checkpoint strictly from a path, URL or library tag; returns its local path."""
    t = recipe.teacher
    assert t.checkpoint is not None
    loaded = pretrained.load_weights(teacher, t.arch, t.checkpoint, "teacher.checkpoint", CHECKPOINT_CACHE, log,
                                     member=t.checkpoint_member, sha256=t.sha256, progress=not log.quiet,
                                     replace_classifier=False)
    return loaded.source


def teacher_stage(recipe: Recipe, run: RunDir, ds: Datasets, ctx: TrainContext) -> tuple[nn.Module, str]:
    """The teacher, loaded strictly or trained here; its test accuracy is measured
    either way, because public checkpoints have been found below their reported accuracy."""
    device, log, dist = ctx.device, ctx.log, ctx.dist
    teacher = models.create_model(recipe.teacher.arch, num_classes=len(ds.classes)).to(device)
    test_loader = _loader(ds.test, recipe)
    if recipe.teacher.checkpoint:
        with dist.main_first():  # one download into the checkpoint cache
            source = load_teacher_weights(recipe, teacher, log)
    elif run.teacher.exists():
        models.load_state_dict_strict(teacher, models.load_checkpoint(run.teacher), source=str(run.teacher))
        source = str(run.teacher)
        log(f"[teacher] reusing the teacher trained earlier in this run ({run.teacher})")
    else:
        epochs = recipe.teacher.epochs or recipe.optim.epochs
        if recipe.teacher.init:  # fine-tune from these weights (e.g. ImageNet) on this run's classes
            with dist.main_first():
                pretrained.load_weights(teacher, recipe.teacher.arch, recipe.teacher.init, "teacher.init",
                                        CHECKPOINT_CACHE, log, progress=not log.quiet)
        log(f"[teacher] no teacher.checkpoint: training {recipe.teacher.arch} for {epochs} epochs first")
        stage = Stage(name="teacher", module=teacher, classifier=teacher, compute=CEStep(teacher),
                      term_names=["ce"], parameters=list(teacher.parameters()), folder=run.teacher_dir,
                      epochs=epochs, lr=recipe.teacher.lr or recipe.optim.lr,
                      metrics_comments=[f"richkd-deploy {__version__} teacher stage, arch {recipe.teacher.arch}"],
                      checkpoint_meta={"arch": recipe.teacher.arch, "num_classes": len(ds.classes)})
        fit(stage, recipe.optim, ctx, ds.train, test_loader)
        if dist.is_main:
            models.save_checkpoint({"format": TEACHER_FORMAT, "model": teacher.state_dict(), "arch": recipe.teacher.arch,
                        "num_classes": len(ds.classes), "classes": ds.classes}, run.teacher)
        dist.barrier()
        if not dist.is_main:  # DDP kept the weights equal, not the BatchNorm statistics: take rank 0's
            models.load_state_dict_strict(teacher, models.load_checkpoint(run.teacher), source=str(run.teacher))
        source = str(run.teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    if dist.is_main:  # once, not once per rank
        _, acc, n = evaluate(teacher, test_loader, device, devices.amp_enabled(device, recipe.optim.amp))
        log(f"[teacher] {recipe.teacher.arch} test top-1 {acc:.4f} on {n} images")
    return teacher, source


def student_stage(recipe: Recipe, run: RunDir, ds: Datasets, ctx: TrainContext, teacher: nn.Module | None,
                  clip_targets: Any, comments: list[str]) -> tuple[FitResult, nn.Module]:
    device, dist = ctx.device, ctx.dist
    # Seeded here, not by whatever ran before: building or reusing the CLIP cache (rank 0 builds,
    # the others reuse) draws different amounts of randomness, and the initial student (and
    # embeddings) must not depend on it.
    torch.manual_seed(rng.epoch_seed(recipe.seed, "student-init", 0))
    student = models.create_model(recipe.student.arch, num_classes=len(ds.classes))
    if recipe.student.init:
        with dist.main_first():
            pretrained.load_weights(student, recipe.student.arch, recipe.student.init, "student.init",
                                    CHECKPOINT_CACHE, ctx.log, progress=not ctx.log.quiet)
    student = student.to(device)
    teacher_targets = _teacher_targets(recipe, ds, ctx, teacher)
    # gather: every rank applies the memory-bank update of the whole (all-rank) batch.
    distiller = distill.create_distiller(recipe.distill.method, recipe.distill, student=student, teacher=teacher,
                                         clip_targets=clip_targets, num_train=len(ds.train), device=device,
                                         gather=dist.gather_cat if dist.enabled else None,
                                         train_labels=ds.train.labels, teacher_targets=teacher_targets)
    distiller.to(device)
    stage = Stage(name="student", module=distiller, classifier=student, compute=distiller,
                  term_names=distill.term_names(recipe.distill.method, recipe.distill),
                  parameters=list(distiller.trainable_parameters()), folder=run.root, epochs=recipe.optim.epochs,
                  lr=recipe.optim.lr, metrics_comments=comments,
                  checkpoint_meta={"arch": recipe.student.arch, "num_classes": len(ds.classes)})
    holdout = _loader(ds.holdout, recipe) if ds.holdout is not None and len(ds.holdout) else None
    return fit(stage, recipe.optim, ctx, ds.train, _loader(ds.test, recipe), holdout), student


def _teacher_targets(recipe: Recipe, ds: Datasets, ctx: TrainContext,
                     teacher: nn.Module | None) -> TeacherTargets | None:
    """The teacher's outputs on the training set, computed once when `teacher.targets`
    and the training transform allow it (train/teacher_targets.py); None: run it every step."""
    if teacher is None or recipe.distill.method == "vanilla":
        return None
    features = int(getattr(teacher, "num_features", 0) or 0)
    cache, why = should_cache(recipe.teacher.targets, ds.train, len(ds.classes), features)
    if not cache:
        ctx.log(f"[student] teacher targets online: {why}")
        return None
    opt = recipe.optim
    teacher.to(memory_format=torch.channels_last if opt.channels_last else torch.contiguous_format)
    # The training batch size: the batches the teacher would have run online (and on a CPU
    # a small batch's activations stay in cache: resnet8 at 32 px ran 2.6x faster at 256 than 1,024).
    targets, seconds = build_teacher_targets(teacher, ds.train, ctx.device, opt.batch_size,
                                             ctx.num_workers, recipe.seed,
                                             amp=devices.amp_enabled(ctx.device, opt.amp),
                                             channels_last=opt.channels_last)
    ctx.log(f"[student] teacher targets cached ({why}): {len(targets)} images in {seconds:.1f}s, "
            f"{targets.nbytes / 1024**2:.0f} MiB; the teacher does not run per step")
    return targets


def select_student(recipe: Recipe, run: RunDir, result: FitResult, student: nn.Module,
                   log: RunLog) -> dict[str, Any]:
    """Put the epoch `optim.select` chooses into `student` (rank 0) and return what
    student.pt records about it: the chosen epoch's row and the last one's."""
    select = recipe.optim.select
    if select == "auto":
        select = "best" if result.selected_on_holdout else "last"
    if select == "best" and not result.selected_on_holdout:
        log.warn("optim.select: best, but the holdout split is empty: student.pt holds the last epoch")
        select = "last"
    last, best = result.last, result.best
    chosen = best if select == "best" else last
    if select == "best" and best.get("epoch") != last.get("epoch"):
        saved = models.load_checkpoint(run.best)
        if saved.get("epoch") != best.get("epoch"):
            raise CheckpointError(f"{run.best} holds epoch {saved.get('epoch')}, the run's best holdout epoch is "
                                  f"{best.get('epoch')}; retrain with --force")
        models.load_state_dict_strict(student, saved["model"], source=str(run.best))
    if result.selected_on_holdout:
        log(f"student: best epoch {best['epoch']} (holdout top-1 {best['holdout_acc']:.4f}, test top-1 "
            f"{best['test_acc']:.4f}); last epoch {last['epoch']} (holdout top-1 {last['holdout_acc']:.4f}, "
            f"test top-1 {last['test_acc']:.4f}); student.pt is the {select} (optim.select {recipe.optim.select})")

    def summary(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("epoch", "holdout_acc", "test_acc") if k in row}

    by = "holdout top-1" if select == "best" else "last epoch"
    return {"test_acc": chosen.get("test_acc", float("nan")),
            "selection": {"select": select, "by": by, **summary(chosen)}, "last_epoch": summary(last)}


def train_run(recipe: Recipe, run_dir: Path | None = None, resume: bool = False, force: bool = False,
              quiet: bool = False) -> Path:
    """Run every stage of `recipe` and return the run folder (holding student.pt)."""
    check_architectures(recipe)
    device = devices.resolve_device(recipe.device)
    dist = DistContext.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    run = run_dir_for(recipe, run_dir)
    check_writable(run.root)
    lock = run_lock(run.root, "train") if dist.is_main else contextlib.nullcontext()
    with lock:
        if dist.is_main:
            _prepare_run_folder(recipe, run, resume, force)
        dist.barrier()
        log = RunLog(run.log, quiet=quiet, enabled=dist.is_main)
        torch.manual_seed(recipe.seed)
        log(f"richkd-deploy {__version__}: recipe {recipe.name} ({recipe.source or 'inline'}), "
            f"method {recipe.distill.method}, device {device}, run folder {run.root}")
        with dist.main_first():  # every weight file the recipe names, before any training (offline: fail now)
            pretrained.fetch_all(recipe, CHECKPOINT_CACHE, progress=not quiet)
        with dist.main_first():  # one download of the dataset
            ds = build_recipe_datasets(recipe)
        if ds.dataset != recipe.data.dataset:
            log.warn(f"{recipe.data.dataset} is not available here: data.synthetic_fallback is on, using generated images")
        log(f"data: {ds.dataset} train {len(ds.train)} / holdout {len(ds.holdout) if ds.holdout else 0} / "
            f"test {len(ds.test)}, {len(ds.classes)} classes")
        opt = recipe.optim
        lr = scaled_lr(opt.lr, opt, dist.world_size)
        rule = f"linear: {opt.lr:g} x {dist.world_size}" if opt.lr_scaling == "linear" else "none"
        log(f"batch {opt.batch_size} per process x {dist.world_size} process(es) = effective batch "
            f"{opt.batch_size * dist.world_size}; lr {lr:g} (optim.lr_scaling {rule})"
            + (f"; DDP over {torch.distributed.get_backend()}, sync_bn {opt.sync_bn}" if dist.enabled else ""))

        if recipe.needs_teacher:  # teacher.targets: cached on a transform that draws: refuse before any training
            should_cache(recipe.teacher.targets, ds.train, len(ds.classes), 0)
        ctx = TrainContext(device=device, log=log, seed=recipe.seed, num_workers=recipe.data.num_workers,
                           resume=resume, quiet=quiet, dist=dist)
        teacher, teacher_source = (None, None)
        if recipe.needs_teacher:
            teacher, teacher_source = teacher_stage(recipe, run, ds, ctx)
        else:
            log("[teacher] vanilla training needs no teacher; skipping the teacher stage")

        clip_targets, clip_random = None, False
        comments = [f"richkd-deploy {__version__} student stage, method {recipe.distill.method}, recipe hash {recipe.hash()[:12]}"]
        if recipe.needs_clip:
            clip_targets = prepare_clip_targets(recipe, run, ds.train, ds.test, device, log, mean=ds.mean, std=ds.std,
                                                quiet=quiet, build_cache=dist.is_main,
                                                rank=dist.rank, world_size=dist.world_size)
            clip_random = bool(clip_targets.is_random)
            comments.append(f"clip: {recipe.clip.model} pretrained={recipe.clip.pretrained}"
                            + (" -- RANDOM CLIP WEIGHTS, not for shipping" if clip_random else ""))

        result, student = student_stage(recipe, run, ds, ctx, teacher, clip_targets, comments)
        if dist.is_main:
            final = select_student(recipe, run, result, student, log)
            models.save_checkpoint(student_payload(recipe, student, ds, clip_random, teacher_source, final), run.student)
            log(f"student: {run.student} (test top-1 {final.get('test_acc', float('nan')):.4f})")
        dist.barrier()
    dist.close()
    return run.root


def student_payload(recipe: Recipe, student: nn.Module, ds: Datasets, clip_random: bool,
                    teacher_source: str | None, final: dict[str, Any]) -> dict[str, Any]:
    """What `student.pt` holds: the weights plus everything export and validate need,
    so neither has to guess the architecture, classes or normalisation."""
    return {
        "format": STUDENT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in student.state_dict().items()},
        "arch": recipe.student.arch,
        "num_classes": len(ds.classes),
        "classes": list(ds.classes),
        "input_size": recipe.data.input_size,
        "channels": 3,
        "mean": [float(m) for m in ds.mean],
        "std": [float(s) for s in ds.std],
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.hash(),
        "clip_random": clip_random,
        "clip": {"model": recipe.clip.model, "pretrained": recipe.clip.pretrained} if recipe.needs_clip else None,
        "method": recipe.distill.method,
        "temperature": None,
        "teacher": {"arch": recipe.teacher.arch, "checkpoint": teacher_source} if teacher_source else None,
        "test_acc": float(final.get("test_acc", float("nan"))),
        "selection": final.get("selection"),
        "last_epoch": final.get("last_epoch"),
        "version": __version__,
    }
