"""Distillation losses and distillers (vanilla, KD, CRD, RichKD L / F / L+F)."""

from richkd_deploy.distill.crd import ContrastLoss, ContrastMemory, CRDCriterion, Embed
from richkd_deploy.distill.distillers import (
    Distiller,
    create_distiller,
    list_distillers,
    register_distiller,
    term_names,
)
from richkd_deploy.distill.losses import fuse, kd_loss

__all__ = [
    "CRDCriterion", "ContrastLoss", "ContrastMemory", "Distiller", "Embed", "create_distiller", "fuse",
    "kd_loss", "list_distillers", "register_distiller", "term_names",
]
