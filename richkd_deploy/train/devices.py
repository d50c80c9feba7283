"""Device choice and mixed precision.

AMP is only used on CUDA: on the CPU it changes numerics (bfloat16) without a
speed-up for these small convnets, and it would break bit-exact resume tests.
"""

from __future__ import annotations

import contextlib

import torch

from richkd_deploy.errors import RichKDError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RichKDError("device: cuda was asked for but no CUDA GPU is visible; set device: auto or cpu")
    return torch.device(name)


def amp_enabled(device: torch.device, wanted: bool) -> bool:
    return wanted and device.type == "cuda"


def amp_dtype() -> torch.dtype:
    """bfloat16 where the GPU supports it (no loss scaling needed), else float16."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype())


def make_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A GradScaler that is only active for float16 autocast (bfloat16 needs none)."""
    active = enabled and amp_dtype() == torch.float16
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=active)
