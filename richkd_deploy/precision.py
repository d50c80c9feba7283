"""Mixed precision: the one autocast helper, for training, evaluation and CLIP.

AMP is only used on CUDA: on the CPU it changes numerics (bfloat16) without a
speed-up for these small convnets, and it would break bit-exact resume tests.
"""

from __future__ import annotations

import contextlib

import torch


def amp_dtype() -> torch.dtype:
    """bfloat16 where the GPU supports it (no loss scaling needed), else float16."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype | None = None) -> contextlib.AbstractContextManager:
    """`torch.autocast` on `device` in `dtype` (default `amp_dtype()`), or nothing when
    not `enabled`. CLIP passes float16: its cache fingerprint was made in float16."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype or amp_dtype())
