"""Starting weights: library files load strictly except a classifier of another class
count (replaced, and the log says so); tags resolve without the network; offline, one
fast line naming the file to download."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from richkd_deploy.errors import CheckpointError, RecipeError
from richkd_deploy.models import create_model
from richkd_deploy.models import pretrained as P


def _load(model, path: Path, key: str = "student.init", **kw) -> tuple[P.LoadedWeights, list[str]]:
    lines: list[str] = []
    loaded = P.load_weights(model, model.arch, str(path), key, path.parent / "cache", lines.append, **kw)
    return loaded, lines


def test_torchvision_pth_with_1000_classes_loads_and_replaces_the_head(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    library = torchvision.models.mobilenet_v3_small()  # what torchvision's .pth holds: 1000 classes
    torch.save(library.state_dict(), tmp_path / "mnv3.pth")
    model = create_model("torchvision/mobilenet_v3_small", num_classes=3)
    fresh_head = model.get_classifier().weight.detach().clone()
    loaded, lines = _load(model, tmp_path / "mnv3.pth")
    assert loaded.classifier_replaced
    assert any("1000 classes" in ln and "this run has 3" in ln and "classifier.3 replaced" in ln for ln in lines)
    torch.testing.assert_close(model.model.features[0][0].weight, library.features[0][0].weight)
    torch.testing.assert_close(model.model.classifier[0].weight, library.classifier[0].weight)  # hidden layer kept
    torch.testing.assert_close(model.get_classifier().weight, fresh_head)


def test_timm_safetensors_loads(tmp_path: Path) -> None:
    import timm

    library = timm.create_model("mobilenetv3_small_050")
    save_file(library.state_dict(), str(tmp_path / "model.safetensors"))
    model = create_model("timm/mobilenetv3_small_050", num_classes=1000)
    loaded, lines = _load(model, tmp_path / "model.safetensors")
    assert not loaded.classifier_replaced and not any("replaced" in ln for ln in lines)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x).logits, library.eval()(x))


def test_our_student_pt_loads_into_the_same_architecture(tmp_path: Path) -> None:
    src = create_model("timm/resnet10t", num_classes=4)
    torch.save({"format": "richkd-deploy/student/1", "model": src.state_dict(), "arch": "timm/resnet10t"},
               tmp_path / "student.pt")
    model = create_model("timm/resnet10t", num_classes=4)
    loaded, _ = _load(model, tmp_path / "student.pt")
    assert not loaded.classifier_replaced
    for a, b in zip(model.state_dict().values(), src.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_everything_but_the_classifier_is_strict(tmp_path: Path) -> None:
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.bn2.running_mean"]
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"does not fit torchvision/resnet18 with 3 classes: 1 missing key \(model.layer4.1.bn2.running_mean\)"):
        _load(create_model("torchvision/resnet18", num_classes=3), tmp_path / "r18.pth")
    # another architecture's head: not a class-count difference, so not replaced
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(CheckpointError, match="another architecture"):
        _load(create_model("torchvision/resnet18", num_classes=3), tmp_path / "r50.pth")


def test_a_finished_teacher_of_another_class_count_is_refused(tmp_path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="trained for 1000 classes.*set teacher.init instead"):
        _load(create_model("torchvision/resnet18", num_classes=3), tmp_path / "r18.pth", key="teacher.checkpoint",
              replace_classifier=False)


def test_tags_resolve_from_library_metadata() -> None:
    assert P.resolve_tag("torchvision/resnet18", "imagenet", "k").url.endswith("resnet18-f37072fd.pth")
    assert P.resolve_tag("torchvision/resnet50", "IMAGENET1K_V2", "k").label == "torchvision/resnet50:IMAGENET1K_V2"
    timm_w = P.resolve_tag("timm/mobilenetv3_small_100", "imagenet", "k")
    assert timm_w.hf_repo == "timm/mobilenetv3_small_100.lamb_in1k"
    with pytest.raises(RecipeError, match="valid tags are imagenet, IMAGENET1K_V1"):
        P.resolve_tag("torchvision/resnet18", "IMAGENET1K_V9", "student.init")
    with pytest.raises(RecipeError, match="valid tags are imagenet, c3_in1k"):
        P.resolve_tag("timm/resnet10t", "nope_in1k", "student.init")
    with pytest.raises(RecipeError, match="one of our CIFAR models"):
        P.resolve_tag("resnet8", "imagenet", "student.init")


@pytest.mark.parametrize("arch, needle", [("torchvision/resnet18", "download.pytorch.org/models/resnet18-f37072fd.pth"),
                                          ("timm/resnet10t", "huggingface.co/timm/resnet10t.c3_in1k")])
def test_offline_tag_is_one_fast_line_naming_the_file(tmp_path: Path, monkeypatch, arch: str, needle: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hf"))
    model = create_model(arch, num_classes=3)
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        P.load_weights(model, arch, "imagenet", "student.init", tmp_path / "cache", print)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and "offline" in msg and "set student.init: /path/to/" in msg


def test_cli_offline_tag_exits_2_before_training(tmp_path: Path, monkeypatch) -> None:
    from tests.train.helpers import SMOKE, cli

    # kd: the smoke recipe trains a teacher first; the student's missing weights must stop the run before that
    out = cli("train", str(SMOKE), "-o", "distill.method=kd", "-o", "student.arch=torchvision/resnet18",
              "-o", "student.init=imagenet", "--run-dir", str(tmp_path / "run"), "--quiet",
              env={"TORCH_HOME": str(tmp_path / "torch")})  # cli() sets HF_HUB_OFFLINE=1
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "resnet18-f37072fd.pth" in out.stderr
    assert not (tmp_path / "run" / "student.pt").exists() and not (tmp_path / "run" / "teacher").exists()
    assert "[teacher]" not in (tmp_path / "run" / "train.log").read_text()
