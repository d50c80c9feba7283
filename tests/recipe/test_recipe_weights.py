"""student.init / teacher.init / teacher.checkpoint: files, URLs and library tags, checked
without the network; the ImageNet and image-folder recipes pass `recipe check`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from richkd_deploy import recipe
from richkd_deploy.errors import RecipeError
from richkd_deploy.models.for_recipe import check_architectures

REPO = Path(__file__).resolve().parents[2]


def _load(tmp_path: Path, **sections) -> recipe.Recipe:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(sections))
    r = recipe.load(p)
    check_architectures(r)  # what `recipe check` and `train` run after loading
    return r


def test_tags_stay_tags_and_files_resolve(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"x")
    r = _load(tmp_path, teacher={"arch": "torchvision/resnet50", "init": "imagenet"},
              student={"arch": "timm/mobilenetv3_small_100", "init": "w.safetensors"})
    assert r.teacher.init == "imagenet"
    assert r.student.init == str((tmp_path / "w.safetensors").resolve())
    r = _load(tmp_path, student={"arch": "timm/resnet10t", "init": "c3_in1k"},
              teacher={"arch": "torchvision/resnet34", "checkpoint": "IMAGENET1K_V1"})
    assert r.student.init == "c3_in1k" and r.teacher.checkpoint == "IMAGENET1K_V1"


@pytest.mark.parametrize("sections, fragment", [
    ({"student": {"arch": "torchvision/resnet18", "init": "IMAGENET1K_V7"}}, "student.init: 'IMAGENET1K_V7' is not"),
    ({"student": {"arch": "timm/resnet10t", "init": "in22k"}}, "valid tags are imagenet, c3_in1k"),
    ({"student": {"arch": "resnet8", "init": "imagenet"}}, "one of our CIFAR models"),
    ({"student": {"arch": "torchvision/resnet18", "init": "gone.pth"}}, "student.init: .*gone.pth is not a file"),
    ({"teacher": {"arch": "torchvision/resnet18", "init": "imagenet", "checkpoint": "imagenet"}},
     "either checkpoint .* or init"),
    ({"student": {"arch": "timm/not_a_model_at_all"}}, "student.arch"),
])
def test_bad_weight_specs_are_refused_with_their_key(tmp_path: Path, sections: dict, fragment: str) -> None:
    with pytest.raises(RecipeError, match=fragment):
        _load(tmp_path, **sections)


@pytest.mark.parametrize("name", ["imagenet", "folder"])
def test_shipped_edge_recipes_pass_recipe_check(tmp_path: Path, name: str) -> None:
    from richkd_deploy.cli import cli

    for split in ("train", "val"):
        (tmp_path / "images" / split / "ok").mkdir(parents=True)
    out = CliRunner().invoke(cli, ["recipe", "check", str(REPO / "recipes" / f"{name}.yaml"),
                                   "-o", f"data.root={tmp_path / 'images'}"])
    assert out.exit_code == 0, out.output
    r = recipe.load(REPO / "recipes" / f"{name}.yaml", [f"data.root={tmp_path / 'images'}"])
    assert r.data.input_size == 224 and r.data.train_crop == "random_resized" and r.data.eval_crop_ratio == 0.875
    assert r.student.arch.startswith("torchvision/") and r.teacher.arch.startswith("torchvision/")
