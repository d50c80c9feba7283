"""The frozen teacher's outputs on every training image, computed once (`teacher.targets`).

During distillation the teacher is frozen and in eval mode, so its logits and pooled
features on an image depend only on the tensor it is given. When the training
transform draws nothing (no crop offset, no flip: `data.crop_padding: 0`,
`data.hflip: false`, `data.train_crop: pad`), that tensor is the same in every epoch,
and running the teacher at every step recomputes the same numbers: a fifth to a third
of a student step for a teacher the student's size. So the student stage runs the
teacher once over the training set, in index order, through the training transform
itself, and the distiller looks its targets up by dataset index, as it does CLIP's.

The numbers are those of the online teacher up to floating-point summation order (a
batch of another composition). A transform that draws anything keeps the teacher
online: a cached target would belong to another crop or flip than the student sees.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from richkd_deploy.data import make_loader
from richkd_deploy.errors import RecipeError
from richkd_deploy.train import devices

#: `teacher.targets: auto` caches only when the table fits comfortably in memory.
AUTO_LIMIT_BYTES = 2 * 1024**3


class TeacherTargets:
    """Logits `[N, K]` and pooled features `[N, D]` of the teacher for the N training
    images, on the training device; `get(indices)` is what `teacher(images)` returns."""

    def __init__(self, logits: Tensor, features: Tensor) -> None:
        if logits.shape[0] != features.shape[0]:
            raise ValueError(f"{logits.shape[0]} logits rows for {features.shape[0]} feature rows")
        self.logits, self.features = logits, features

    def __len__(self) -> int:
        return self.logits.shape[0]

    def get(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        idx = indices.to(self.logits.device, torch.int64)
        return self.logits.index_select(0, idx), self.features.index_select(0, idx)

    @property
    def nbytes(self) -> int:
        return self.logits.nbytes + self.features.nbytes


def transform_draws_nothing(dataset: Any) -> bool:
    """Whether `dataset`'s transform gives an image the same tensor every time. A
    transform that does not say (a user's own) counts as random."""
    return bool(getattr(getattr(dataset, "transform", None), "deterministic", False))


def table_bytes(num_images: int, num_classes: int, num_features: int) -> int:
    return 4 * num_images * (num_classes + num_features)


def should_cache(mode: str, dataset: Any, num_classes: int, num_features: int) -> tuple[bool, str]:
    """(cache or not, why) for `teacher.targets` `mode` on this training set; RecipeError
    when `cached` is asked of a transform that draws."""
    if mode == "online":
        return False, "teacher.targets: online"
    if not transform_draws_nothing(dataset):
        if mode == "cached":
            raise RecipeError("teacher.targets: cached needs a training transform that draws nothing "
                              "(data.crop_padding: 0, data.hflip: false, data.train_crop: pad); "
                              "set teacher.targets: auto or online")
        return False, "the training transform draws crops or flips, so the teacher runs every step"
    size = table_bytes(len(dataset), num_classes, num_features)
    if mode == "auto" and size > AUTO_LIMIT_BYTES:
        return False, (f"the table would take {size / 1024**3:.1f} GiB (teacher.targets: cached to force it), "
                       "so the teacher runs every step")
    return True, "the training transform draws nothing"


@torch.no_grad()
def build_teacher_targets(teacher: nn.Module, dataset: Any, device: torch.device, batch_size: int,
                          num_workers: int, seed: int, amp: bool = False,
                          channels_last: bool = False) -> tuple[TeacherTargets, float]:
    """Run the frozen `teacher` (eval mode) over `dataset` through its own transform;
    returns the table (row i = dataset index i) and the seconds it took."""
    t0 = time.perf_counter()
    was_training = teacher.training
    teacher.eval()
    logits_rows: Tensor | None = None
    feature_rows: Tensor | None = None
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, seed=seed)
    try:
        for images, _labels, indices in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with devices.autocast(device, amp):
                logits, features = teacher(images)
            if logits_rows is None or feature_rows is None:
                logits_rows = torch.empty(len(dataset), logits.shape[1], device=device)
                feature_rows = torch.empty(len(dataset), features.flatten(1).shape[1], device=device)
            idx = indices.to(device, torch.int64)
            logits_rows[idx] = logits.float()
            feature_rows[idx] = features.flatten(1).float()
    finally:
        teacher.train(was_training)
    if logits_rows is None or feature_rows is None:
        raise RecipeError("the training set is empty; check data.train_limit")
    return TeacherTargets(logits_rows, feature_rows), time.perf_counter() - t0
