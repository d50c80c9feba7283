"""Fixtures for the exporter tests: real Fashion-MNIST images through the eval
transform, and a tiny CNN quickly trained on them (a random-init model is not a fair
INT8 agreement test: its logits are nearly tied)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from exporters.inputs import ExportData
from richkd_deploy.recipe import ExportConfig
from richkd_deploy.student import Student

from .helpers import TinyNet, load_images, payload_for


@pytest.fixture(scope="session")
def fmnist() -> dict[str, Any]:
    xtr, ytr, classes, name, mean, std = load_images("train", 3000)
    xte, yte, *_ = load_images("test", 1000)
    return {"train": (xtr, ytr), "test": (xte, yte), "classes": classes, "name": name, "mean": mean, "std": std}


@pytest.fixture(scope="session")
def trained_tiny(fmnist: dict[str, Any]) -> nn.Module:
    """~3 epochs on 3000 images; one thread, because on a busy 2-core machine two
    torch threads contend and train several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = TinyNet(len(fmnist["classes"]))
        xtr, ytr = (torch.from_numpy(a) for a in fmnist["train"])
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        model.train()
        for lr in (3e-3, 1e-3, 3e-4):
            for group in opt.param_groups:
                group["lr"] = lr
            for idx in torch.randperm(len(ytr), generator=g).split(64):
                opt.zero_grad()
                nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture
def export_inputs(fmnist: dict[str, Any], trained_tiny: nn.Module) -> dict[str, Any]:
    """Everything export_student needs, small: 256 test and 128 calibration images."""
    xte, yte = fmnist["test"]
    xtr, _ = fmnist["train"]
    return {
        "student": Student(trained_tiny, payload_for(fmnist), sha256=None),
        "data": ExportData(xte[:256], yte[:256], xtr[:128], fmnist["name"]),
        "settings": ExportConfig(parity_images=64, calibration_images=128),
    }
