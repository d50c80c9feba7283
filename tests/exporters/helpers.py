"""Helpers shared by the exporter tests: a tiny residual CNN,
Fashion-MNIST loading and the interrupted-export invariant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    """Stem, one residual block (a branch point, as in every ResNet) and a strided
    stage: small enough to train in seconds, shaped like the real students."""

    def __init__(self, num_classes: int = 10, width: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.conv2(self.conv1(x)))
        x = self.down(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 2), 1))


def load_images(split: str, limit: int) -> tuple[np.ndarray, np.ndarray, list[str], str, Any, Any]:
    from richkd_deploy import data
    from richkd_deploy.errors import DataError

    try:
        ds = data.build_dataset("fashion-mnist", split, limit=limit, seed=0)
        name = "fashion-mnist"
    except DataError:
        ds = data.build_dataset("synthetic", split, limit=limit, seed=0)
        name = "synthetic"
    mean, std = data.default_mean_std(name)
    x = ds.images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    return x.astype(np.float32), ds.labels.astype(np.int64), list(ds.classes), name, mean, std




def payload_for(fmnist: dict[str, Any], arch: str = "tinynet") -> dict[str, Any]:
    return {"arch": arch, "num_classes": len(fmnist["classes"]), "classes": fmnist["classes"], "input_size": 32,
            "channels": 3, "mean": list(fmnist["mean"]), "std": list(fmnist["std"]), "recipe_hash": "0" * 64,
            "clip_random": True, "method": "richkd_lf", "temperature": 1.5}


def quiet_log(_msg: str) -> None:
    pass


def listed_files_ok(export_dir: Path) -> bool:
    """The invariant after any interruption: no manifest, or one whose every file is complete."""
    from richkd_deploy.manifest import MANIFEST_NAME, read_manifest, verify_artifact

    if not (export_dir / MANIFEST_NAME).exists():
        return True
    manifest = read_manifest(export_dir)
    for entry in manifest["artifacts"]:
        verify_artifact(manifest, entry["file"])
    return True


def make_run(root: Path, arch: str = "resnet8", recipe_data: dict | None = None) -> Path:
    """A run folder as `richkd-deploy train` leaves it (random weights, synthetic data);
    `recipe_data` replaces the default recipe (its student.arch must be `arch`)."""
    from richkd_deploy import data, models, recipe

    r = recipe.from_dict(recipe_data or {
        "name": "exp", "data": {"dataset": "synthetic", "test_limit": 200, "train_limit": 300},
        "student": {"arch": arch}, "distill": {"method": "vanilla"},
        "export": {"calibration_images": 64, "parity_images": 64}})
    torch.manual_seed(0)
    model = models.create_model(arch, num_classes=10)
    mean, std = data.default_mean_std("synthetic")
    payload = {"format": "richkd-deploy/student/1", "model": model.state_dict(), "arch": arch, "num_classes": 10,
               "classes": data.class_names("synthetic"), "input_size": 32, "channels": 3, "mean": list(mean),
               "std": list(std), "recipe": r.to_dict(), "recipe_hash": r.hash(), "clip_random": False, "clip": None,
               "method": "vanilla", "temperature": None}
    root.mkdir(parents=True)
    torch.save(payload, root / "student.pt")
    (root / "recipe.yaml").write_text(r.to_yaml())
    return root
