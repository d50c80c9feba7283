"""Training: the teacher stage, the CLIP stage and the distilled student."""

from __future__ import annotations

from richkd_deploy.train.pipeline import train_run

__all__ = ["train_run"]
