"""PyTorch eager: the reference every exported artifact is compared with.

Runs an `nn.Module` directly (export's parity reference, bench's baseline) or a
checkpoint: `student.pt` is read by `richkd_deploy.student` like everywhere else; a
teacher checkpoint (`{"arch", "model"}`) or a bare state dict plus `arch=` (mdistiller's
`{"model": state_dict}`) goes through the same strict weight loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from richkd_deploy import models
from richkd_deploy.errors import CheckpointError
from richkd_deploy.runtime.base import Runtime
from richkd_deploy.student import STUDENT_FORMAT, load_student


def load_classifier(path: Path, arch: str | None = None,
                    num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A logits-only module and the checkpoint's description of it (input size, classes)."""
    payload = models.load_checkpoint(path)  # weights_only, one-line errors
    if payload.get("format") == STUDENT_FORMAT:
        student = load_student(path, require_recipe=False)
        return student.view, dict(student.meta)
    state = payload.get("model", payload)
    arch = payload.get("arch") or arch
    if not arch:
        raise CheckpointError(f"{path} does not say its architecture; pass arch=")
    if num_classes is None:
        num_classes = payload.get("num_classes")
    if num_classes is None:
        heads = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
        if not heads:
            raise CheckpointError(f"{path}: cannot infer the number of classes; pass num_classes=")
        num_classes = int(heads[-1].shape[0])
    model = models.create_model(arch, num_classes=int(num_classes))
    models.load_state_dict_strict(model, state, source=str(path))
    info = {k: v for k, v in payload.items() if k != "model"} if "model" in payload else {}
    info["num_classes"] = int(num_classes)
    return models.export_view(model).eval(), info


class TorchRuntime(Runtime):
    """PyTorch eager, from an nn.Module or a checkpoint path."""

    suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth")

    def __init__(self, model: nn.Module | str | Path, device: str = "cpu", arch: str | None = None,
                 num_classes: int | None = None, name: str = "torch") -> None:
        self.name = name
        self.device = torch.device(device)
        if isinstance(model, (str, Path)):
            self.path = Path(model)
            model, info = load_classifier(self.path, arch=arch, num_classes=num_classes)
            size = info.get("input_size")
            if size:
                self.input_shape = (int(info.get("channels", 3)), int(size), int(size))
            self.num_classes = info.get("num_classes")
        self.model = model.eval().to(self.device)
        # NHWC: oneDNN's convolutions run about 1.4x faster in it on the CPU (resnet8, 32 px,
        # batch 128-512, 2 threads); the inputs are converted per chunk to match. Only for a
        # model this runtime loaded itself: a caller's module is not converted under it.
        self.channels_last = self.device.type == "cpu" and self.path is not None
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def open(cls, path: Path, provider: str | None = None, **kwargs: Any) -> TorchRuntime:
        return cls(path, **kwargs)

    #: images per forward pass on the CPU, as pixels (32 images of 128x128, 10 of 224x224):
    #: an eager forward allocates every activation afresh, and above glibc's 32 MB mmap
    #: threshold each one is mapped, page-faulted and unmapped again. Measured on 128
    #: images of 128 px, 2 threads: resnet18 3.48 s (0.70 s system) at batch 128, 3.37 s
    #: (0.33) at 32, 3.20 s (0.07) at 8; mobilenet_v3_small 0.67 s (0.26) at 128, 0.42 s
    #: (0.03) at 32, 0.60 s at 8 (per-call overhead). GPUs keep the whole batch.
    CPU_CHUNK_PIXELS = 32 * 128 * 128

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        step = len(batch)
        if self.device.type == "cpu":
            step = max(1, self.CPU_CHUNK_PIXELS // max(1, int(np.prod(batch.shape[2:]))))
        outs = []
        with torch.inference_mode():
            for i in range(0, len(batch), step):
                x = torch.from_numpy(batch[i:i + step]).to(self.device)
                if self.channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = self.model(x)
                if isinstance(out, (tuple, list)):
                    out = out[0]  # (logits, features) models
                outs.append(out.float().cpu().numpy())
        return outs[0] if len(outs) == 1 else np.concatenate(outs, 0)
