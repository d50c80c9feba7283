"""Device choice and the training side of mixed precision (when AMP is on, the loss
scaler); the autocast helper itself is `richkd_deploy.precision`, shared with CLIP.
"""

from __future__ import annotations

import torch

from richkd_deploy.errors import RichKDError
from richkd_deploy.precision import amp_dtype, autocast

__all__ = ["amp_dtype", "amp_enabled", "autocast", "make_scaler", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RichKDError("device: cuda was asked for but no CUDA GPU is visible; set device: auto or cpu")
    return torch.device(name)


def amp_enabled(device: torch.device, wanted: bool) -> bool:
    return wanted and device.type == "cuda"


def make_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A GradScaler that is only active for float16 autocast (bfloat16 needs none)."""
    active = enabled and amp_dtype() == torch.float16
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=active)
