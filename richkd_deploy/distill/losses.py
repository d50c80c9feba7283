"""Logit losses shared by the distillers: Hinton KD and RichKD's teacher/CLIP fusion."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """`T^2 * KL(softmax(t / T) || softmax(s / T))`, summed over classes, mean over the batch.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al.).
    Computed in float32 from log-probabilities on both sides, so it is stable
    under AMP and for very confident teachers.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def fuse(teacher: Tensor, clip: Tensor, weight: float) -> Tensor:
    """RichKD fusion `weight * teacher + (1 - weight) * clip` (alpha for logits, lambda for features)."""
    return weight * teacher + (1.0 - weight) * clip
