"""Online CLIP targets: CLIP sees the student's own augmented view.

The student normalisation is undone, the batch is resized on the device to CLIP's
input size (CLIP's interpolation, antialiased), CLIP-normalised and encoded without
gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from richkd_deploy.clip.encode import clip_autocast
from richkd_deploy.clip.loader import LoadedClip
from richkd_deploy.clip.prompts import ZeroShotHead
from richkd_deploy.clip.source import ClipTargetSource


class OnlineClipTargets(ClipTargetSource):
    """CLIP on the student's own augmented batch, on the training device, without gradients."""

    def __init__(self, loaded: LoadedClip, head: ZeroShotHead, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device)
        self.head = head.to(self.device)
        self.image_size = loaded.image_size
        self.interpolation = loaded.interpolation if loaded.interpolation in ("bicubic", "bilinear") else "bicubic"
        self.resize_mode = loaded.resize_mode
        self.num_classes = head.num_classes
        self.feature_dim = loaded.embed_dim
        self.is_random = loaded.is_random
        self._student_mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self._student_std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self._clip_mean = torch.tensor(loaded.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._clip_std = torch.tensor(loaded.std, dtype=torch.float32).view(1, 3, 1, 1)

    def to_clip_input(self, images: Tensor) -> Tensor:
        """Student-normalised [B, C, h, w] -> CLIP-normalised [B, 3, S, S] (C = 1 is repeated)."""
        dev = images.device
        x = images.float() * self._student_std.to(dev) + self._student_mean.to(dev)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        s = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (s, s):
            if self.resize_mode == "squash":
                size = (s, s)
            else:  # "shortest": shortest side to S, then a centre crop, like CLIP's Resize + CenterCrop
                scale = s / min(h, w)
                size = (max(s, round(h * scale)), max(s, round(w * scale)))
            x = F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True)
            top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
            x = x[..., top:top + s, left:left + s]
        x = x.clamp(0.0, 1.0)  # bicubic overshoots; PIL's uint8 output clamps too
        return (x - self._clip_mean.to(dev)) / self._clip_std.to(dev)

    @torch.no_grad()
    def get(self, indices: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        x = self.to_clip_input(images.to(self.device))
        with clip_autocast(self.device):
            feats = self.model.encode_image(x)  # type: ignore[operator]
        feats = feats.float()
        return self.head(feats), feats
