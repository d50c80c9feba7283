"""Teacher-driven quantization-aware training (QAT) of a finished student.

`richkd-deploy export --qat` (or `export.int8.qat_epochs: N` in the recipe) runs this
before the export: the trained student is fine-tuned for N epochs with fake
quantization in its forward pass, under the run's own distillation target, and the
result is written to `RUN/qat/student_qat.pt`, from which the exporter builds
model.int8.onnx (model.onnx stays the trained student, so validate judges the QAT
INT8 artifact against the FP32 model the user trained).

What the fake quantization models, and why it is this and not torch's FX QAT:

* weights: per-output-channel symmetric int8 in 7 bits (values -64..64, scale =
  max|w| / 64 per channel, recomputed at every step), the grid `exporters.int8`
  gives onnxruntime (`reduce_range`, symmetric weights). Per-channel symmetric
  quantization is unchanged by folding BatchNorm into the convolution (it scales each
  output channel by a constant), so quantizing the unfolded weight here puts exactly
  the integers on the grid that the folded ONNX weight gets;
* activations: the input of every Conv2d / Linear, per tensor, int8 symmetric
  (-127..127, scale = max|x| / 127) or asymmetric (-128..127 with a zero point) as
  `export.int8.symmetric_activations` says, with torch's moving-average MinMax observer
  (the mean of recent batches' min/max). onnxruntime's MinMax calibrator takes the
  all-time min/max of the calibration images instead; an all-time range never shrinks,
  so a weight change that shrinks an outlier activation would go unrewarded (the recovery
  benchmark's outlier model, 3 QAT epochs, one run each: top-1 drop 58.6 points after plain
  MinMax, 28.1 after QAT with the all-time range, 24.5 with the moving average);
* straight-through gradients (`torch.fake_quantize_*`); BatchNorm statistics and
  dropout frozen (the student runs in eval mode), so the forward is the deployed one.

It is installed with instance `forward` overrides on the student's own modules
(`FakeQuant`), so parameter names and the state dict stay those of student.pt and the
fine-tuned float weights are saved as a normal student. torch's `prepare_qat_fx`
would need a symbolically traceable model (not every timm/torchvision model is) and
renames the fused Conv+BN modules.

Export then re-calibrates the activations with onnxruntime on the calibration images
(`exporters.int8.quantize_int8`, the same path and settings as without QAT): the
ranges learnt here are not carried over, only the weights, which were trained against
the same weight grid and a close approximation of the activation grid. This is the
simple, consistent route; it does not model onnxruntime's quantization of Add inputs
or of Conv outputs before their Relu.

Loss: `w_ce * CE + w_logit * T^2 KL(target || student)` with the recipe's temperature
and weights (w_logit 1 when the run's method has no logit term), the target being the
fused `alpha * teacher + (1 - alpha) * CLIP` logits when the method uses CLIP (from the
run's CLIP cache, or online), else the teacher's logits. SGD with the recipe's momentum
and weight decay, lr = optim.lr * 0.01, cosine over the QAT epochs.

Run folder rules as training: the run lock is held (by the caller, the CLI), `qat/`
holds `checkpoints/last.pt` written atomically after every epoch (and on Ctrl-C), and
`student_qat.pt` written atomically at the end. Re-running resumes from `last.pt` when it
belongs to the same student and settings, starts over when not, and reuses a finished
`student_qat.pt` of the same student and settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from richkd_deploy import models
from richkd_deploy.clip import prepare_clip_targets
from richkd_deploy.data import make_loader
from richkd_deploy.data.for_recipe import build_recipe_datasets
from richkd_deploy.distill.losses import fuse, kd_loss
from richkd_deploy.errors import CheckpointError, RecipeError, RichKDError
from richkd_deploy.models import pretrained
from richkd_deploy.recipe import Recipe
from richkd_deploy.runs import RunDir
from richkd_deploy.student import load_student, read_student_payload, recipe_of, write_student
from richkd_deploy.train import devices
from richkd_deploy.train.context import TrainContext
from richkd_deploy.train.log import RunLog
from richkd_deploy.train.loop import TrainingInterrupted, fit
from richkd_deploy.train.stage import Stage
from richkd_deploy.train.state import load_state

DEFAULT_EPOCHS = 2  # `--qat` on a run whose recipe leaves export.int8.qat_epochs at 0
LR_FACTOR = 0.01
WEIGHT_QMAX = 64  # onnxruntime's reduced-range symmetric int8 weights: -64..64
QAT_DIR = "qat"
QAT_FILE = "student_qat.pt"


# -- fake quantization ------------------------------------------------------------------------

def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization on onnxruntime's 7-bit weight grid."""
    scale = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12) / WEIGHT_QMAX
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale.float(), zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX)


def activation_fake_quant(symmetric: bool) -> nn.Module:
    """Per-tensor int8 fake quantization of an activation with a moving-average MinMax observer."""
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    if symmetric:
        return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
                            qscheme=torch.per_tensor_symmetric)
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
                        qscheme=torch.per_tensor_affine)


def _quantized_forward(module: nn.Module, act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(module, nn.Conv2d):
        return lambda x: module._conv_forward(act(x), fake_quant_weight(module.weight), module.bias)
    return lambda x: F.linear(act(x), fake_quant_weight(module.weight), module.bias)


class FakeQuant(nn.Module):
    """Fake quantization on every Conv2d / Linear of `model`, installed as instance
    `forward` overrides (the model's parameters and state-dict keys are untouched).
    Holds the activation fake-quant modules (their observed ranges are its state);
    `remove()` restores the float forwards; `observe(False)` freezes the ranges."""

    def __init__(self, model: nn.Module, symmetric_activations: bool = True) -> None:
        super().__init__()
        self.acts = nn.ModuleDict()
        self._patched: list[nn.Module] = []
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                key = name.replace(".", "__") or "root"
                self.acts[key] = activation_fake_quant(symmetric_activations)
                module.forward = _quantized_forward(module, self.acts[key])  # type: ignore[method-assign]
                self._patched.append(module)
        if not self._patched:
            raise RecipeError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")

    @property
    def layers(self) -> int:
        return len(self._patched)

    def observe(self, on: bool) -> None:
        for act in self.acts.values():
            act.enable_observer(on)

    def remove(self) -> None:
        for module in self._patched:
            with contextlib.suppress(AttributeError):
                del module.forward
        self._patched = []


# -- the training step -----------------------------------------------------------------------

class QATStep(nn.Module):
    """The QAT stage's compute: the fake-quantized student under the distillation target.
    Teacher and CLIP targets are held outside the module tree (not checkpointed), as in
    the distillers. The student stays in eval mode (BatchNorm statistics, dropout frozen);
    `train(mode)` only switches the activation observers."""

    def __init__(self, student: nn.Module, teacher: nn.Module, clip_targets: Any | None, alpha: float,
                 temperature: float, w_ce: float, w_kd: float, symmetric_activations: bool) -> None:
        super().__init__()
        self.student = student.eval()
        self.fake_quant = FakeQuant(student, symmetric_activations)
        teacher.eval().requires_grad_(False)
        self._frozen = (teacher, clip_targets)
        self.alpha, self.temperature, self.w_ce, self.w_kd = alpha, temperature, w_ce, w_kd
        self.term_names = [n for n, w in (("ce", w_ce), ("kd", w_kd)) if w > 0]

    def train(self, mode: bool = True) -> QATStep:
        self.training = mode
        self.fake_quant.observe(mode)
        self.student.eval()
        self._frozen[0].eval()
        return self

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> QATStep:
        super()._apply(fn, *args, **kwargs)
        self._frozen[0]._apply(fn, *args, **kwargs)
        return self

    def target(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        teacher, clip = self._frozen
        with torch.no_grad():
            t = teacher(images)[0].float()
            if clip is None:
                return t
            return fuse(t, clip.get(indices, images)[0].float(), self.alpha)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        logits = self.student(images)[0]
        terms: dict[str, torch.Tensor] = {}
        if self.w_ce > 0:
            terms["ce"] = self.w_ce * F.cross_entropy(logits.float(), labels)
        if self.w_kd > 0:
            terms["kd"] = self.w_kd * kd_loss(logits, self.target(images, indices), self.temperature)
        return logits, terms


class QATClassifier(nn.Module):
    """What the loop evaluates each epoch: the fake-quantized student with the observers
    frozen while it runs on test images (test images never move a calibrated range)."""

    def __init__(self, step: QATStep) -> None:
        super().__init__()
        self.student = step.student
        self._step = (step,)

    def train(self, mode: bool = True) -> QATClassifier:
        self.training = mode
        self._step[0].fake_quant.observe(mode and self._step[0].training)
        return self

    def forward(self, images: torch.Tensor):
        return self.student(images)


# -- the run-level command -------------------------------------------------------------------

def qat_epochs_for(run_root: Path, flag: bool, epochs: int | None) -> int:
    """How many QAT epochs `export` runs: `--qat-epochs`, else the recipe's
    `export.int8.qat_epochs`, else DEFAULT_EPOCHS with `--qat`; 0 = no QAT."""
    if epochs is not None:
        if epochs < 0:
            raise RecipeError(f"--qat-epochs {epochs}: give a number of epochs >= 1 (or leave QAT off)")
        return epochs
    path = RunDir(Path(run_root)).student
    recipe = recipe_of(read_student_payload(path), path)
    configured = recipe.export.int8.qat_epochs
    if configured < 0:
        raise RecipeError(f"export.int8.qat_epochs: {configured}; give 0 (off) or a number of epochs")
    return configured or (DEFAULT_EPOCHS if flag else 0)


def _check_target(recipe: Recipe, meta: dict[str, Any]) -> None:
    if "int8" not in recipe.export.precisions:
        raise RecipeError("export --qat makes model.int8.onnx, but export.precisions has no int8; add it")
    if not recipe.needs_teacher:
        raise RecipeError(f"export --qat fine-tunes under the run's distillation target, but this run was trained "
                          f"with distill.method {recipe.distill.method} (no teacher); export without --qat")


def _load_teacher(recipe: Recipe, run: RunDir, meta: dict[str, Any], num_classes: int, log: RunLog) -> nn.Module:
    from richkd_deploy.train.pipeline import CHECKPOINT_CACHE

    teacher = models.create_model(recipe.teacher.arch, num_classes=num_classes)
    if recipe.teacher.checkpoint:
        pretrained.load_weights(teacher, recipe.teacher.arch, recipe.teacher.checkpoint, "teacher.checkpoint",
                                CHECKPOINT_CACHE, log, member=recipe.teacher.checkpoint_member,
                                sha256=recipe.teacher.sha256, progress=not log.quiet, replace_classifier=False)
    elif run.teacher.exists():
        models.load_state_dict_strict(teacher, models.load_checkpoint(run.teacher), source=str(run.teacher))
    else:
        raise CheckpointError(f"export --qat needs the run's teacher: {run.teacher} is missing and the recipe names "
                              "no teacher.checkpoint; keep the run folder whole or export without --qat")
    return teacher


def _settings(meta_sha: str | None, epochs: int, lr: float, symmetric: bool) -> dict[str, Any]:
    return {"source_student_sha256": meta_sha, "epochs": epochs, "lr": lr, "schedule": "cosine",
            "activations": "int8 symmetric" if symmetric else "int8 asymmetric",
            "weights": f"int8 per-channel symmetric, -{WEIGHT_QMAX}..{WEIGHT_QMAX}"}


def qat_run(run_root: Path, epochs: int, *, quiet: bool = False) -> Path:
    """Fine-tune RUN's student.pt with fake quantization; returns RUN/qat/student_qat.pt.
    The caller holds the run lock (the CLI takes it around QAT and the export). Lines go to
    the terminal (unless `quiet`) and to RUN/qat/qat.log."""
    if epochs < 1:
        raise RecipeError(f"QAT epochs {epochs}: give a number >= 1")
    run = RunDir(Path(run_root))
    folder = run.root / QAT_DIR
    out = folder / QAT_FILE
    source = load_student(run.student)
    recipe = source.recipe()
    _check_target(recipe, source.meta)
    q = recipe.export.int8
    lr = recipe.optim.lr * LR_FACTOR
    settings = _settings(source.sha256, epochs, lr, q.symmetric_activations)
    say = rlog = RunLog(folder / "qat.log", quiet=quiet)
    if out.exists():
        with contextlib.suppress(RichKDError):
            done = read_student_payload(out).get("qat") or {}
            if all(done.get(k) == v for k, v in settings.items()):
                say(f"[qat] {out} is this student's QAT with these settings; reusing it")
                return out
    stage_folder = folder
    last = stage_folder / "checkpoints" / "last.pt"
    resume = False
    if last.exists():
        try:
            saved = load_state(last)
            resume = all(saved.get(k) == v for k, v in settings.items())
        except CheckpointError:
            resume = False
        if not resume:
            say(f"[qat] {last} is from another student or other settings; starting QAT over")
            for p in (last, stage_folder / "checkpoints" / "best.pt", stage_folder / "metrics.csv"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    device = devices.resolve_device(recipe.device)
    ds = build_recipe_datasets(recipe)
    payload = read_student_payload(run.student)
    student = models.create_model(payload["arch"], num_classes=int(payload["num_classes"]))
    models.load_state_dict_strict(student, payload["model"], source=str(run.student))
    teacher = _load_teacher(recipe, run, source.meta, len(ds.classes), rlog)
    clip = None
    if recipe.needs_clip:
        clip = prepare_clip_targets(recipe, run, ds.train, None, device, rlog, mean=ds.mean, std=ds.std,
                                    quiet=quiet, zero_shot=False)
    d = recipe.distill
    step = QATStep(student, teacher, clip, d.alpha, d.temperature, d.w_ce, d.w_logit or 1.0,
                   q.symmetric_activations).to(device)
    target = "fused teacher + CLIP logits" if clip is not None else "teacher logits"
    say(f"[qat] {recipe.student.arch}: {epochs} epoch(s) of QAT on {len(ds.train)} training images, "
        f"{step.fake_quant.layers} Conv/Linear layers fake-quantized, target {target} (T={d.temperature}), "
        f"lr {lr:g} cosine" + (f"; resuming from {last}" if resume else ""))
    cfg = dataclasses.replace(recipe.optim, amp=False, compile=False, channels_last=False, lr_scaling="none",
                              milestones=(), schedule="cosine", warmup_epochs=0.0)  # per batch, down to 0
    stage = Stage(name="qat", module=step, classifier=QATClassifier(step), compute=step, term_names=step.term_names,
                  parameters=[p for p in student.parameters() if p.requires_grad], folder=stage_folder,
                  epochs=epochs, lr=lr, metrics_comments=[f"QAT of {run.student} ({target})"],
                  checkpoint_meta=settings)
    ctx = TrainContext(device=device, log=rlog, seed=recipe.seed, num_workers=recipe.data.num_workers,
                       resume=resume, quiet=quiet)
    try:
        fit(stage, cfg, ctx, ds.train, make_loader(ds.test, batch_size=recipe.validate.batch_size,
                                                            shuffle=False, num_workers=0, seed=recipe.seed))
    except TrainingInterrupted:
        raise TrainingInterrupted(f"QAT interrupted; its checkpoint is in {last}; run the same export --qat "
                                  "command again to continue") from None
    history = load_state(last)["history"]
    step.fake_quant.remove()
    record = {**settings, "loss_per_epoch": [float(r["train_loss"]) for r in history],
              "terms_per_epoch": {n: [float(r[n]) for r in history] for n in step.term_names},
              "fake_quant_test_top1_per_epoch": [float(r["test_acc"]) for r in history],
              "target": target, "temperature": d.temperature, "training_images": len(ds.train),
              "float_student_test_top1": source.meta.get("test_acc"),
              "recalibration": "weights from QAT; activation ranges re-calibrated by onnxruntime at export"}
    new = {**payload, "model": {k: v.detach().cpu() for k, v in student.state_dict().items()}, "qat": record}
    write_student(new, out)
    say(f"[qat] wrote {out}: loss per epoch {', '.join(f'{v:.4f}' for v in record['loss_per_epoch'])}; "
        f"fake-quant test top-1 {record['fake_quant_test_top1_per_epoch'][-1]:.4f}")
    return out


class _LogitsPair(nn.Module):
    """A logits-only model as the (logits, features) pair the QAT step reads."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = self.model(x)
        return (out[0] if isinstance(out, (tuple, list)) else out), None


def qat_arrays(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, *,
               batch_size: int = 64, temperature: float = 4.0, w_ce: float = 1.0, w_kd: float = 1.0,
               symmetric_activations: bool = True, seed: int = 0, optimizer: str = "sgd") -> list[float]:
    """The same QAT step on in-memory arrays, without a run folder (the recovery benchmark's
    entry): SGD (momentum 0.9) or Adam (`optimizer`: for a model trained with Adam, or one
    whose layers differ in scale by orders of magnitude, where one SGD lr cannot fit all),
    cosine lr over `epochs`, a seeded shuffle per epoch. Trains `student` in place (fake
    quantization removed at the end); returns the mean loss per epoch."""
    step = QATStep(_LogitsPair(student), _LogitsPair(teacher), None, 1.0, temperature, w_ce, w_kd,
                   symmetric_activations)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    try:
        step.train(True)
        for _ in range(epochs):
            total, seen = 0.0, 0
            for idx in torch.randperm(len(x), generator=gen).split(batch_size):
                loss = sum(step(x[idx], y[idx], idx)[1].values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, seen = total + loss.item() * len(idx), seen + len(idx)
            sched.step()
            losses.append(total / max(seen, 1))
    finally:
        step.fake_quant.remove()
        student.eval()
    return losses
