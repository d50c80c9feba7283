"""Issue 19: packaged recipes by name, `recipe list` / `recipe init`, and where a packaged
recipe's relative paths go (the user data folder, not site-packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from richkd_deploy import recipe, recipes_catalog, user_cache
from richkd_deploy.data.cifar import load_cifar
from richkd_deploy.errors import DataError, RecipeError
from tests.train.helpers import cli

REPO = Path(__file__).resolve().parents[2]
PACKAGED = REPO / "richkd_deploy" / "recipes"
NAMES = sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def test_every_packaged_recipe_has_a_description_and_loads_by_name(tmp_path: Path) -> None:
    assert NAMES and [r.name for r in recipes_catalog.packaged()] == NAMES
    for split in ("train", "val"):  # the user's own folder, for the recipes made for one (folder, imagenet)
        (tmp_path / "images" / split / "ok").mkdir(parents=True)
    for r in recipes_catalog.packaged():
        first = r.path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# description: ") and r.description == first[len("# description: "):].strip()
        assert 10 <= len(r.description) <= 160, r.name
        own_data = yaml.safe_load(r.path.read_text())["data"]["dataset"] in ("imagefolder", "imagenet")
        ovs = [f"data.root={tmp_path / 'images'}"] if own_data else []
        loaded = recipes_catalog.load(r.name, ovs)
        assert loaded.name == r.name and Path(loaded.source) == r.path.resolve()
        assert loaded.hash() == recipes_catalog.load(f"{r.name}.yaml", ovs).hash() == recipe.load(r.path, ovs).hash()


def test_the_top_level_recipes_folder_is_a_symlink_to_the_packaged_one() -> None:
    link = REPO / "recipes"
    assert link.is_symlink() and link.resolve() == PACKAGED.resolve()
    if (REPO / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-s", "recipes"], cwd=REPO, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            assert out.stdout.split()[0] == "120000", out.stdout  # committed as a link, so a clone has one
    assert recipes_catalog.is_packaged(link / "smoke.yaml")


def test_an_existing_file_wins_over_a_packaged_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for spec in ("smoke", "smoke.yaml"):
        (tmp_path / spec).write_text(yaml.safe_dump({"name": f"mine-{spec}"}))
        assert recipes_catalog.load(spec).name == f"mine-{spec}"
    assert recipes_catalog.load("edge").name == "edge"  # no file called edge here: the packaged one


def test_unknown_names_and_missing_files_say_what_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"did you mean 'smoke'\? packaged: .*edge, .*quickstart, smoke") as info:
        recipes_catalog.load("smok")
    assert "\n" not in str(info.value)
    with pytest.raises(RecipeError, match="file not found"):
        recipes_catalog.load("configs/smoke.yaml")  # a path: never a packaged name
    (tmp_path / "myrecipes").mkdir()
    with pytest.raises(RecipeError, match="is a folder"):
        recipes_catalog.load("myrecipes")


def test_user_data_folder_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache.data_dir() == tmp_path / "xdg" / "richkd-deploy" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert user_cache.data_dir() == Path.home() / ".cache" / "richkd-deploy" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache.data_dir() == Path.home() / ".cache" / "richkd-deploy" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(DataError, match=str(tmp_path / "xdg" / "richkd-deploy" / "data" / "cifar")):
        load_cifar("cifar10", "test", download=False)  # CIFAR's default root is the same folder


def test_packaged_relative_paths_resolve_against_the_user_data_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "site-packages" / "richkd_deploy" / "recipes"
    shipped.mkdir(parents=True)
    (shipped / "rel.yaml").write_text("# description: relative paths\n" + yaml.safe_dump(
        {"name": "rel", "data": {"dataset": "imagefolder", "root": "images"},
         "validate": {"corruptions": {"source": "cifar-10-c"}}}))
    monkeypatch.setattr(recipes_catalog, "PACKAGED_DIR", shipped)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "cache" / "richkd-deploy" / "data"
    (data / "images").mkdir(parents=True)
    work = tmp_path / "work"
    (work / "mine").mkdir(parents=True)
    monkeypatch.chdir(work)

    r = recipes_catalog.load("rel")
    assert r.data.root == str(data / "images") and r.validate.corruptions.source == str(data / "cifar-10-c")
    assert not str(r.data.root).startswith(str(shipped))
    # a path typed on the command line means the folder the user typed it in
    r = recipes_catalog.load("rel", ["data.root=mine", "optim.epochs=2"])
    assert r.data.root == str(work / "mine") and r.optim.epochs == 2
    assert r.validate.corruptions.source == str(data / "cifar-10-c")
    assert r.source == str(shipped / "rel.yaml")
    # the same file outside the package (a copy the user owns) resolves against its own folder
    own = work / "rel.yaml"
    shutil.copy(shipped / "rel.yaml", own)
    (work / "images").mkdir()
    assert recipes_catalog.load(str(own)).data.root == str(work / "images")


def test_init_copies_and_refuses_to_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    original = (PACKAGED / "edge.yaml").read_bytes()
    assert recipes_catalog.init("edge") == Path("edge.yaml")
    assert (tmp_path / "edge.yaml").read_bytes() == original
    (tmp_path / "edge.yaml").write_text("# mine\n")
    with pytest.raises(RecipeError, match="exists; pass --force"):
        recipes_catalog.init("edge")
    assert (tmp_path / "edge.yaml").read_text() == "# mine\n"
    recipes_catalog.init("edge", force=True)
    assert (tmp_path / "edge.yaml").read_bytes() == original
    assert recipes_catalog.init("smoke", "configs/") == Path("configs/smoke.yaml")  # a folder, made
    assert recipes_catalog.init("smoke", "configs", force=True) == Path("configs/smoke.yaml")
    assert recipes_catalog.init("smoke", "fast.yaml").read_bytes() == (PACKAGED / "smoke.yaml").read_bytes()
    assert recipes_catalog.load("fast.yaml").name == "smoke"
    with pytest.raises(RecipeError, match="did you mean 'edge'"):
        recipes_catalog.init("edg")
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_cli_list_init_and_names(tmp_path: Path) -> None:
    listed = cli("recipe", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == NAMES
    assert "recipe init NAME" in listed.stderr
    made = cli("recipe", "init", "quickstart", cwd=tmp_path)
    assert made.returncode == 0 and (tmp_path / "quickstart.yaml").is_file(), made.stderr
    again = cli("recipe", "init", "quickstart", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    checked = cli("recipe", "check", "smoke", "-o", "optim.epochs=3", cwd=tmp_path)
    assert checked.returncode == 0 and yaml.safe_load(checked.stdout)["optim"]["epochs"] == 3, checked.stderr
    bad = cli("train", "smok", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'smoke'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "run").exists() and os.listdir(tmp_path) == ["quickstart.yaml"]
