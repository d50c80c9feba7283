"""The distillers: vanilla, KD, CRD and the three RichKD variants behind one interface.

`forward(images, labels, indices) -> (student_logits, terms)`; `terms` maps a
name (`ce`, `kd`, `crd`) to a term that is already weighted, so the trainer's
loss is `sum(terms.values())`. A term whose weight is 0 does not exist: it is
not computed and allocates nothing (no memory bank, no embeddings), unlike the
authors' code, which returned the int 0 and then crashed on `.mean()`.

Teacher and CLIP are frozen and deliberately NOT registered as submodules (held
in a plain tuple), so `state_dict()` carries only what training changes (student,
embeddings, CRD banks and Z) and checkpoints never contain the teacher or CLIP
targets. They are moved with the distiller (`.to()`/`.cuda()`) and kept in eval
mode even when the distiller is in train mode.

| method    | terms       | target of the logit term      | target of the CRD term                          |
|-----------|-------------|-------------------------------|-------------------------------------------------|
| vanilla   | ce          |                               |                                                 |
| kd        | ce, kd      | teacher logits                |                                                 |
| crd       | ce, crd     |                               | e_T(f_T)                                        |
| richkd_l  | ce, kd      | alpha z_T + (1 - alpha) z_C   |                                                 |
| richkd_f  | ce, crd     |                               | normalize(lam e_T(f_T) + (1 - lam) e_C(f_C))    |
| richkd_lf | ce, kd, crd | as richkd_l                   | as richkd_f                                     |

Weights: ce = w_ce, kd = w_logit, crd = w_feat (the recipe's distill section).
CRD's negatives come from other classes than the anchor's (`distill.crd_negatives:
other_class`, as published; the distiller then needs `train_labels`) or from every
training image (`uniform`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd_deploy.distill.crd import CRDCriterion, Embed, Gather
from richkd_deploy.distill.losses import fuse, kd_loss
from richkd_deploy.errors import RecipeError

_REGISTRY: dict[str, type[Distiller]] = {}

TERM_ORDER = ("ce", "kd", "crd")


def register_distiller(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator filing a distiller under `name` (a `distill.method` value)."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"distiller {name!r} is already registered")
        cls.method = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_distillers() -> list[str]:
    return list(_REGISTRY)


def _num_features(model: nn.Module, role: str) -> int:
    n = getattr(model, "num_features", None)
    if not isinstance(n, int) or n < 1:
        raise RecipeError(f"{role} model {type(model).__name__} has no num_features attribute; "
                          "use an architecture from richkd_deploy.models")
    return n


class Distiller(nn.Module):
    """Base class: student registered, teacher and CLIP targets held outside the module tree.

    Subclasses only set `logit_target` / `feat_target`; the terms are assembled here
    from the weights in `cfg`, so every method shares one forward and one set of checks.
    """

    method = "base"
    logit_target: str | None = None  # None | "teacher" | "fused"
    feat_target: str | None = None  # None | "teacher" | "fused"

    def __init__(self, cfg: Any, student: nn.Module, teacher: nn.Module | None = None,
                 clip_targets: Any | None = None, num_train: int = 0,
                 device: torch.device | str = "cpu", gather: Gather | None = None, seed: int = 0,
                 train_labels: Any | None = None, teacher_targets: Any | None = None) -> None:
        """`teacher_targets`: the teacher's outputs on every training image, looked up by
        dataset index instead of running the teacher (`get(indices) -> (logits, features)`;
        train/teacher_targets.py), for a training transform that draws nothing."""
        super().__init__()
        self.cfg = cfg
        self.device_ = torch.device(device)
        self.student = student.to(self.device_)
        self.gather = gather
        names = term_names(self.method, cfg)
        self.term_names = names
        if not names:
            raise RecipeError(f"distill: every loss weight of method {self.method} is 0 (w_ce, w_logit, w_feat); "
                              "give at least one a positive weight")
        self.do_kd = "kd" in names
        self.do_crd = "crd" in names
        needs_teacher = self.do_kd or self.do_crd
        if needs_teacher and teacher is None:
            raise RecipeError(f"distill.method {self.method} needs a teacher: set teacher.arch and teacher.checkpoint")
        self.needs_clip = (self.do_kd and self.logit_target == "fused") or (self.do_crd and self.feat_target == "fused")
        if self.needs_clip and clip_targets is None:
            raise RecipeError(f"distill.method {self.method} needs CLIP targets (the clip section of the recipe)")
        if teacher is not None and needs_teacher:
            teacher = teacher.to(self.device_).eval()
            teacher.requires_grad_(False)
        else:
            teacher = None
        # A plain tuple: not a submodule, so not in state_dict(), parameters() or .train().
        self._frozen: tuple[nn.Module | None, Any | None] = (teacher, clip_targets if self.needs_clip else None)
        self._check_classes(student, teacher, clip_targets if self.needs_clip else None)
        self.teacher_targets = teacher_targets if teacher is not None else None

        if self.do_crd:
            if num_train < 1:
                raise RecipeError(f"distill.method {self.method}: CRD needs the training set size (num_train)")
            negatives = getattr(cfg, "crd_negatives", "other_class")
            if negatives == "other_class":
                if train_labels is None:
                    raise RecipeError(f"distill.method {self.method}: CRD's other-class negatives need the training "
                                      "labels (train_labels); or set distill.crd_negatives: uniform")
                if len(train_labels) != num_train:
                    raise RecipeError(f"distill.method {self.method}: {len(train_labels)} training labels for "
                                      f"{num_train} training images")
                if torch.as_tensor(train_labels).unique().numel() < 2:
                    raise RecipeError("distill.crd_negatives: other_class needs at least two classes in the "
                                      "training set; use uniform")
            dim = cfg.feat_dim
            self.embed_s = Embed(_num_features(student, "student"), dim).to(self.device_)
            self.embed_t = Embed(_num_features(teacher, "teacher"), dim).to(self.device_)  # type: ignore[arg-type]
            if self.feat_target == "fused":
                self.embed_c = Embed(int(clip_targets.feature_dim), dim).to(self.device_)  # type: ignore[union-attr]
            self.crd = CRDCriterion(dim, num_train, cfg.nce_k, cfg.nce_t, cfg.nce_momentum,
                                    device=self.device_, seed=seed, negatives=negatives,
                                    labels=train_labels if negatives == "other_class" else None)

    # -- frozen parts -----------------------------------------------------------------------

    @property
    def teacher(self) -> nn.Module | None:
        return self._frozen[0]

    @property
    def clip_targets(self) -> Any | None:
        return self._frozen[1]

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Distiller:
        """`.to()`, `.cuda()`, `.half()` also move the (unregistered) teacher."""
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @staticmethod
    def _check_classes(student: nn.Module, teacher: nn.Module | None, clip: Any | None) -> None:
        k_s = getattr(student, "num_classes", None)
        for role, k in (("teacher", getattr(teacher, "num_classes", None) if teacher is not None else None),
                        ("CLIP head", getattr(clip, "num_classes", None) if clip is not None else None)):
            if k is not None and k_s is not None and k != k_s:
                raise RecipeError(f"the student has {k_s} classes but the {role} has {k}; they must be trained "
                                  "on the same class list (check data.dataset and teacher.checkpoint)")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student + embeddings: everything the optimiser should update."""
        return [p for p in self.parameters() if p.requires_grad]

    # -- forward ----------------------------------------------------------------------------

    def forward(self, images: Tensor, labels: Tensor, indices: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        logits_s, feats_s = self.student(images)
        terms: dict[str, Tensor] = {}
        if cfg.w_ce > 0:
            terms["ce"] = cfg.w_ce * F.cross_entropy(logits_s.float(), labels)
        if not (self.do_kd or self.do_crd):
            return logits_s, terms
        teacher = self.teacher
        assert teacher is not None
        if teacher.training:
            teacher.eval()
        with torch.no_grad():
            if self.teacher_targets is not None:
                logits_t, feats_t = self.teacher_targets.get(indices)
            else:
                logits_t, feats_t = teacher(images)
            clip_logits = clip_feats = None
            if self.needs_clip:
                clip_logits, clip_feats = self.clip_targets.get(indices, images)  # type: ignore[union-attr]
        if self.do_kd:
            target = logits_t if self.logit_target == "teacher" else fuse(logits_t.float(), clip_logits, cfg.alpha)
            terms["kd"] = cfg.w_logit * kd_loss(logits_s, target, cfg.temperature)
        if self.do_crd:
            emb_s = self.embed_s(feats_s)
            emb_t = self.embed_t(feats_t.detach())
            if self.feat_target == "fused":
                emb_c = self.embed_c(clip_feats.to(emb_t.dtype))  # type: ignore[union-attr]
                emb_t = F.normalize(fuse(emb_t.float(), emb_c.float(), cfg.lam), dim=1)
            terms["crd"] = cfg.w_feat * self.crd(emb_s, emb_t, indices.to(emb_s.device), gather=self.gather)
        return logits_s, terms


def term_names(method: str, cfg: Any) -> list[str]:
    """The term keys `forward` returns for `method` with these weights (metrics.csv header)."""
    cls = _REGISTRY.get(method)
    if cls is None:
        raise RecipeError(f"distill.method: unknown method {method!r}; known: {', '.join(_REGISTRY)}")
    names = []
    if cfg.w_ce > 0:
        names.append("ce")
    if cls.logit_target is not None and cfg.w_logit > 0:
        names.append("kd")
    if cls.feat_target is not None and cfg.w_feat > 0:
        names.append("crd")
    return names


@register_distiller("vanilla")
class Vanilla(Distiller):
    """Cross-entropy only: the student trained alone."""


@register_distiller("kd")
class KD(Distiller):
    """Hinton KD: CE + w_logit * T^2 KL(teacher || student)."""

    logit_target = "teacher"


@register_distiller("crd")
class CRD(Distiller):
    """CE + w_feat * CRD between e_S(f_S) and e_T(f_T)."""

    feat_target = "teacher"


@register_distiller("richkd_l")
class RichKDL(Distiller):
    """CE + w_logit * KD on the fused logits alpha z_T + (1 - alpha) z_C."""

    logit_target = "fused"


@register_distiller("richkd_f")
class RichKDF(Distiller):
    """CE + w_feat * CRD towards normalize(lam e_T(f_T) + (1 - lam) e_C(f_C))."""

    feat_target = "fused"


@register_distiller("richkd_lf")
class RichKDLF(Distiller):
    """RichKD L+F: both fused terms."""

    logit_target = "fused"
    feat_target = "fused"


def create_distiller(method: str, cfg: Any, student: nn.Module, teacher: nn.Module | None = None,
                     clip_targets: Any | None = None, num_train: int = 0, device: torch.device | str = "cpu",
                     gather: Gather | None = None, seed: int = 0, train_labels: Any | None = None,
                     teacher_targets: Any | None = None) -> Distiller:
    """Build the distiller for `method` (a `distill.method` value) from a `DistillConfig`.

    `gather` (DDP): a callable concatenating a tensor from all ranks along dim 0; CRD's
    memory update and Z go through it so every rank's bank stays identical. `seed`
    fixes the banks' random init (the negatives' stream is `seed + rank`). `train_labels`:
    the class of every training image, in dataset index order (CRD's other-class negatives).
    """
    if method not in _REGISTRY:
        raise RecipeError(f"distill.method: unknown method {method!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[method](cfg, student, teacher, clip_targets, num_train, device, gather, seed, train_labels,
                             teacher_targets)
