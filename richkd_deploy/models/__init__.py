"""Model zoo: CIFAR distillation architectures with checkpoint-compatible names.

Every model returns `(logits, pooled_features)`; `export_view` gives the logits-only
module that is exported. Importing this package registers every architecture.
"""

from __future__ import annotations

from richkd_deploy.models import mobilenetv2, resnet_cifar, resnet_v2, shufflenet, vgg, wrn  # noqa: F401
from richkd_deploy.models.base import CifarClassifier, ModelOutput, export_view
from richkd_deploy.models.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint
from richkd_deploy.models.fetch import fetch_checkpoint
from richkd_deploy.models.registry import create_model, list_models, register_model

__all__ = [
    "CifarClassifier",
    "ModelOutput",
    "create_model",
    "export_view",
    "fetch_checkpoint",
    "list_models",
    "load_checkpoint",
    "load_state_dict_strict",
    "register_model",
    "save_checkpoint",
]
