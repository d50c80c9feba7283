"""The one forward contract every architecture in the zoo follows.

Research KD code returns different things depending on flags and on the
architecture (a tensor, a `(list, tensor)` pair, a dict of stage outputs). The
distillers, the trainer and the exporter here all need the same two things --
the logits and the pooled vector that feeds the classifier -- so every model
returns exactly that, as a `ModelOutput`, whatever its mode.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ModelOutput(NamedTuple):
    """`(logits [N, K], features [N, D])`; a plain tuple, so it unpacks and DDP handles it."""

    logits: Tensor
    features: Tensor


class CifarClassifier(nn.Module):
    """Base class: subclasses build the trunk and name their own classifier layer.

    The classifier keeps the name the public checkpoints use (`fc`, `linear`,
    `classifier`, `classifier.0`), so subclasses return it from `get_classifier`
    instead of the base class owning it.

    Every architecture here ends in a global average over a small map (the
    originals use a fixed-size AvgPool that equals a global mean at 32x32). A
    global adaptive pool gives the same numbers at 32x32 and also works for other
    input sizes, and it exports to ONNX as a single GlobalAveragePool.
    """

    num_features: int
    num_classes: int

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the last feature map `[N, num_features, h, w]`, before pooling."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Linear:
        """Return the final linear layer (its attribute name differs per family)."""
        raise NotImplementedError

    def forward_head(self, fmap: Tensor) -> ModelOutput:
        pooled = torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
        return ModelOutput(self.get_classifier()(pooled), pooled)

    def forward(self, x: Tensor) -> ModelOutput:
        return self.forward_head(self.forward_features(x))


class LogitsOnly(nn.Module):
    """Export wrapper: ONNX/TensorRT consumers want one output, the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[0]


def export_view(model: nn.Module) -> nn.Module:
    """Wrap `model` so its forward returns the logits only.

    The wrapper shares parameters with `model` (no copy), so it always reflects the
    current weights; its train/eval mode is the wrapped model's. Wrapping twice is a
    no-op, so callers need not check. A torchvision/timm model is exported as the
    library module itself (`export_module()`), whose forward returns the logits.
    """
    if isinstance(model, LogitsOnly):
        return model
    library_module = getattr(model, "export_module", None)
    if library_module is not None:
        return library_module()
    return LogitsOnly(model)


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Initialise like the reference training code (He-normal convs, unit BN).

    A student trained from scratch depends on this, and these are the rules that
    RepDistiller/mdistiller's published numbers used. `linear_std` re-draws the
    classifier from N(0, std) as VGG and MobileNetV2 did there; otherwise the
    PyTorch default stays.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
