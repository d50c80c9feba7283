"""A classifier trained elsewhere (plain torchvision training, its own .pth) goes
through `richkd-deploy export --weights` and then `validate` like one of our runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.helpers import cli
from tests.train.test_edge_folder_pipeline import _folder

pytestmark = pytest.mark.slow


def test_export_and_validate_a_torchvision_checkpoint_trained_elsewhere(tmp_path: Path) -> None:
    import torchvision

    _folder(tmp_path / "images", per_class=6)
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), tmp_path / "mine.pth")
    run = tmp_path / "run"
    small = ["-o", "export.precisions=[fp32,int8]", "-o", "export.calibration_images=8",
             "-o", "export.parity_images=8", "-o", "validate.corruptions.names=[brightness]",
             "-o", "validate.corruptions.severities=[3]", "-o", "validate.corruptions.samples=12"]
    out = cli("export", str(run), "--weights", str(tmp_path / "mine.pth"), "--arch", "torchvision/mobilenet_v3_small",
              "--data", str(tmp_path / "images"), "--input-size", "96", "--quiet", *small, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = torch.load(run / "student.pt", map_location="cpu", weights_only=True)
    assert payload["arch"] == "torchvision/mobilenet_v3_small" and payload["input_size"] == 96
    assert payload["classes"] == ["class0", "class1", "class2"]
    assert {"model.onnx", "model.int8.onnx"} <= {a["file"] for a in
                                                 json.loads((run / "export" / "manifest.json").read_text())["artifacts"]}
    out = cli("validate", str(run), "--json", timeout=600)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads(out.stdout)["rows"]}
    assert rows["model.onnx"]["agreement"]["student"]["top1_agreement"] == 1.0

    # another class count is refused (strict: a model trained elsewhere must fit the folder)
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=5).state_dict(), tmp_path / "five.pth")
    out = cli("export", str(tmp_path / "run5"), "--weights", str(tmp_path / "five.pth"), "--arch",
              "torchvision/mobilenet_v3_small", "--data", str(tmp_path / "images"), "--quiet")
    assert out.returncode == 2 and "trained for 5 classes" in out.stderr and "Traceback" not in out.stderr
