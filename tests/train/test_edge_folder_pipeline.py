"""The edge user's story through the real CLI, on a generated 224-px image folder:
a torchvision teacher fine-tuned from a weights file (teacher.init), a timm student
initialised from a timm .safetensors of another class count (student.init), KD,
then export to ONNX FP32/INT8, then validate. Tiny models, a few dozen images, one
epoch: it proves the path, not the accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.train.helpers import cli

pytestmark = pytest.mark.slow


def _folder(root: Path, per_class: int = 12) -> None:
    """3 classes of 250x250 (and 300x220) JPEGs that differ in colour and a local mark."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 6)):
        for c in range(3):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for k in range(n):
                h, w = (250, 250) if k % 2 else (220, 300)
                arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                arr[..., c] += 150
                arr[40 * c:40 * c + 30, 50:80] = 255
                Image.fromarray(arr).save(d / f"{k}.jpg", quality=90)


@pytest.fixture(scope="module")
def edge_recipe(tmp_path_factory) -> Path:
    import torch
    import torchvision
    from safetensors.torch import save_file

    tmp = tmp_path_factory.mktemp("edge")
    _folder(tmp / "images")
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp / "teacher_init.pth")  # 1000 classes
    import timm

    save_file(timm.create_model("mobilenetv3_small_050").state_dict(), str(tmp / "student_init.safetensors"))
    recipe = {
        "name": "edge-ci", "seed": 0, "device": "cpu",
        "data": {"dataset": "imagefolder", "root": str(tmp / "images"), "input_size": 224,
                 "train_crop": "random_resized", "eval_crop_ratio": 0.875, "holdout_fraction": 0.2,
                 "num_workers": 2, "bad_files": "skip"},
        "teacher": {"arch": "torchvision/mobilenet_v3_small", "init": str(tmp / "teacher_init.pth"), "epochs": 1},
        "student": {"arch": "timm/mobilenetv3_small_050", "init": str(tmp / "student_init.safetensors")},
        "distill": {"method": "kd"},
        "optim": {"epochs": 1, "batch_size": 8, "lr": 0.01, "milestones": [1], "amp": False},
        "export": {"precisions": ["fp32", "int8"], "calibration_images": 8, "parity_images": 8,
                   "parity_atol": 1e-3},
        "validate": {"batch_size": 16, "corruptions": {"names": ["gaussian_noise", "brightness"],
                                                       "severities": [3], "samples": 18},
                     "gates": {"max_top1_drop": None, "min_agreement": None, "max_ece_increase": None,
                               "max_corruption_drop": None}},
    }
    path = tmp / "edge.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_train_export_validate_at_224px(edge_recipe: Path) -> None:
    run = edge_recipe.parent / "run"
    times = {}
    t0 = time.monotonic()
    out = cli("train", str(edge_recipe), "--run-dir", str(run), timeout=900)
    times["train"] = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "classifier has 1000 classes, this run has 3" in log  # both inits replaced the head and said so
    assert "teacher_init.pth" in log and "student_init.safetensors" in log
    import torch

    payload = torch.load(run / "student.pt", map_location="cpu", weights_only=True)
    assert payload["arch"] == "timm/mobilenetv3_small_050" and payload["input_size"] == 224

    for init in ("teacher_init.pth", "student_init.safetensors"):  # starting weights are not needed any more
        (edge_recipe.parent / init).unlink()
    t0 = time.monotonic()
    out = cli("export", str(run), "--quiet", timeout=600)
    times["export"] = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    files = {a["file"] for a in manifest["artifacts"]}
    assert {"model.onnx", "model.int8.onnx"} <= files

    t0 = time.monotonic()
    out = cli("validate", str(run), "--json", timeout=600)
    times["validate"] = time.monotonic() - t0
    assert out.returncode in (0, 1), out.stderr[-3000:]
    results = json.loads(out.stdout)
    rows = {r["name"]: r for r in results["rows"]}
    assert {"torch-fp32", "model.onnx", "model.int8.onnx"} <= set(rows)
    assert rows["model.onnx"]["agreement"]["student"]["top1_agreement"] >= 0.99
    assert set(rows["model.onnx"]["corruptions"]["accuracy"]) == {"gaussian_noise", "brightness"}
    print("edge pipeline seconds:", {k: round(v, 1) for k, v in times.items()})
