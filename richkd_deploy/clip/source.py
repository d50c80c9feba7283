"""What a distiller asks of CLIP, whichever way the targets are made.

Both sources (`cache.CachedClipTargets`, `online.OnlineClipTargets`) answer
`get(indices, images) -> (clip_logits [B, K], clip_features [B, D])` in float32 on
the training device, so the distillers do not care which one runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor


class ClipTargetSource(ABC):
    """What a distiller asks of CLIP: targets for a batch, by dataset index and/or image."""

    feature_dim: int
    num_classes: int
    is_random: bool

    @abstractmethod
    def get(self, indices: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        """`(clip_logits [B, K] float32, clip_features [B, D] float32)` on `images.device`.

        `indices` are dataset indices (LongTensor [B]); `images` is the student's
        normalised, augmented batch on the training device.
        """
