from __future__ import annotations

import pytest
import yaml

from richkd_deploy import recipe
from richkd_deploy.errors import RecipeError


@pytest.mark.parametrize("name", ["edge", "quickstart", "smoke"])
def test_shipped_recipes_load(repo, name):
    r = recipe.load(repo / "recipes" / f"{name}.yaml")
    assert r.name == name
    assert len(r.clip.templates) == 12


def test_edge_has_the_authors_hyperparameters(repo):
    r = recipe.load(repo / "recipes" / "edge.yaml")
    d, o = r.distill, r.optim
    assert (d.method, d.w_logit, d.w_feat, d.w_ce, d.temperature, d.alpha, d.lam) == ("richkd_lf", 3, 0.8, 1, 3, 0.7, 0.7)
    assert (d.feat_dim, d.nce_k, d.nce_t, d.nce_momentum) == (128, 16384, 0.07, 0.5)
    assert (o.lr, o.momentum, o.weight_decay, o.batch_size, o.epochs, o.milestones) == (0.05, 0.9, 5e-4, 64, 240, (150, 180, 210))
    assert (r.teacher.arch, r.student.arch, r.clip.model, r.data.dataset) == ("resnet32x4", "resnet8x4", "ViT-L-14", "cifar100")


def write(tmp_path, data):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("data, fragment", [
    ({"optim": {"epochs": "ten"}}, "optim.epochs: got 'ten', expected an integer"),
    ({"optim": {"epochz": 3}}, "optim.epochz: unknown key; did you mean 'epochs'?"),
    ({"colour": 1}, "colour: unknown key"),
    ({"optim": {"lr": -1}}, "optim.lr: got -1"),
    ({"optim": {"lr": float("nan")}}, "optim.lr"),
    ({"distill": {"method": "rickd_lf"}}, "did you mean 'richkd_lf'"),
    ({"distill": {"alpha": 1.5}}, "distill.alpha: got 1.5, expected a number in [0, 1]"),
    ({"data": {"dataset": "mnist"}}, "data.dataset"),
    ({"optim": {"amp": "yes"}}, "optim.amp: got 'yes', expected true/false"),
    ({"optim": {"milestones": [5, 3]}}, "increasing"),
    ({"optim": 3}, "optim: got 3, expected a mapping"),
    ({"name": "../escape"}, "name: got '../escape'"),
    ({"teacher": {"checkpoint": "missing.pth"}}, "teacher.checkpoint"),
    ({"clip": {"templates": ["no placeholder"]}}, "clip.templates"),
    ({"export": {"trt": {"min_batch": 8, "opt_batch": 4}}}, "min_batch <= opt_batch"),
    ({"clip": {"pretrained": "none"}}, "clip.allow_random: true"),
    ({"data": {"dataset": "imagefolder"}}, "data.root"),
])
def test_bad_recipes_name_the_key(tmp_path, data, fragment):
    with pytest.raises(RecipeError) as info:
        recipe.load(write(tmp_path, data))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_not_yaml_and_not_a_mapping(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optim: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        recipe.load(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        recipe.load(p)
    with pytest.raises(RecipeError, match="file not found"):
        recipe.load(tmp_path / "nope.yaml")


def test_overrides_and_types(tmp_path):
    r = recipe.load(write(tmp_path, {}), ["optim.epochs=1", "distill.method=kd", "clip.logit_scale=1.0",
                                          "optim.milestones=[1, 2]", "data.mean=[0.5]"])
    assert r.optim.epochs == 1 and r.distill.method == "kd" and r.clip.logit_scale == 1.0
    assert r.optim.milestones == (1, 2) and r.data.mean == (0.5,)
    assert recipe.load(write(tmp_path, {}), ["clip.logit_scale=learned"]).clip.logit_scale == "learned"
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        recipe.load(write(tmp_path, {}), ["optim.epochs"])
    with pytest.raises(RecipeError, match="optim.nope: unknown key"):
        recipe.load(write(tmp_path, {}), ["optim.nope=1"])


def test_paths_resolve_relative_to_the_recipe(tmp_path):
    sub = tmp_path / "recipes"
    sub.mkdir()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "t.pth").write_bytes(b"x")
    p = sub / "r.yaml"
    p.write_text(yaml.safe_dump({"teacher": {"checkpoint": "../weights/t.pth"},
                                 "data": {"dataset": "imagefolder", "root": "../weights"}}))
    r = recipe.load(p)
    assert r.teacher.checkpoint == str((tmp_path / "weights" / "t.pth").resolve())
    assert r.data.root == str((tmp_path / "weights").resolve())


def test_hash_is_stable_and_sensitive(tmp_path):
    a = recipe.load(write(tmp_path, {}))
    b = recipe.from_dict({}, base_dir=tmp_path)
    assert a.hash() == b.hash()
    assert a.hash() != recipe.from_dict({"optim": {"epochs": 2}}).hash()


def test_round_trip_through_yaml(repo, tmp_path):
    r = recipe.load(repo / "recipes" / "edge.yaml")
    p = tmp_path / "again.yaml"
    p.write_text(r.to_yaml())
    assert recipe.load(p).hash() == r.hash()


def test_recipe_module_imports_nothing_above_it(repo):
    """The recipe is the ground floor: its only project import is the error hierarchy."""
    import ast

    tree = ast.parse((repo / "richkd_deploy" / "recipe.py").read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {n for n in names if n.startswith("richkd_deploy")} == {"richkd_deploy.errors"}


def test_recipe_check_names_an_unknown_architecture_on_one_line(tmp_path):
    """The check moved from recipe.py to models/for_recipe.py; the CLI's answer is the same."""
    from tests.train.helpers import cli

    out = cli("recipe", "check", str(write(tmp_path, {"student": {"arch": "resnet8x5"}})))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: student.arch: unknown architecture 'resnet8x5'; did you "
                                                   "mean resnet8x4") and lines[0].endswith("see richkd-deploy models")
