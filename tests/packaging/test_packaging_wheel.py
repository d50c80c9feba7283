"""Issue 19: the wheel and sdist built from this checkout work where the checkout is not.

An editable install finds every file in the source tree, so a recipe or config left out
of the package data only shows up for someone who installed the wheel. Here the wheel is
built (from a copy of the working tree, and again from the sdist), installed into a fresh
virtual environment in a temporary folder, and the console script is run from a folder
outside the checkout with nothing of the checkout on sys.path.

The fresh environment gets no dependencies from an index (nothing is downloaded): the
wheel goes in with --no-deps --no-index, and a .pth file appends the test interpreter's
site-packages (torch, onnx, ...) after the fresh environment's own. A path line in a
.pth file does not run that folder's .pth files, so an editable install of the checkout
living there stays inactive; the test checks that richkd_deploy is imported from the
fresh environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from richkd_deploy import __version__

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in (REPO / "richkd_deploy" / "recipes").glob("*.yaml"))
# Build outputs, environments and caches; never part of what the package is built from.
_IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "runs", "build", "dist", "shared", "*.egg-info",
                                 "__pycache__", ".pytest_cache", ".ruff_cache", "*.tmp")


_PIP_OFFLINE = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")  # no network, no prompt


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) \
        -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _PIP_OFFLINE, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _build_wheel(src: Path, out: Path) -> Path:
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", out, src], cwd=src)
    (wheel,) = out.glob("richkd_deploy-*.whl")
    return wheel


class Installed:
    def __init__(self, root: Path) -> None:
        self.root = root
        src = root / "src"
        shutil.copytree(REPO, src, symlinks=True, ignore=_IGNORE)  # the working tree, not the last commit
        dist = root / "dist"
        code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
        self.sdist = dist / _run([sys.executable, "-c", code, dist], cwd=src).stdout.strip().splitlines()[-1]
        self.wheel = _build_wheel(src, dist)
        with tarfile.open(self.sdist) as tar:  # the wheel `pip install richkd-deploy.tar.gz` would build
            tar.extractall(root / "unpacked", filter="data")
        (sdist_src,) = (root / "unpacked").iterdir()
        self.sdist_wheel = _build_wheel(sdist_src, root / "dist-from-sdist")

        self.venv = root / "venv"
        _run([sys.executable, "-m", "venv", "--without-pip", self.venv], cwd=root)
        self.python = self.venv / "bin" / "python"
        site = Path(_run([self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=root).stdout.strip())
        ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        (site / "zz_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
        _run([sys.executable, "-m", "pip", "--python", self.python, "install", "-q", "--no-deps", "--no-index",
              self.wheel], cwd=root)

        self.work = root / "work"  # the user's folder: no checkout in sight
        self.work.mkdir()
        self.cache = root / "cache"
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env.update(PATH=f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1",
                        XDG_CACHE_HOME=str(self.cache), PYTHONUNBUFFERED="1")

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [str(self.venv / "bin" / "richkd-deploy"), *args]
        if check:
            return _run(cmd, cwd=self.work, env=self.env, timeout=timeout)
        return subprocess.run(cmd, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(REPO), "the test folder must be outside the checkout"
    return Installed(root)


def _recipe_names(names: list[str]) -> list[str]:
    return sorted(Path(n).stem for n in names if n.startswith(("richkd_deploy/recipes/",)) and n.endswith(".yaml"))


def test_wheel_and_sdist_carry_every_recipe_as_files(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
        assert _recipe_names(list(infos)) == RECIPES and RECIPES
        for name in RECIPES:  # real files with the checkout's bytes, not a symlink
            member = f"richkd_deploy/recipes/{name}.yaml"
            assert (infos[member].external_attr >> 16) & 0o170000 != 0o120000
            assert z.read(member) == (REPO / "richkd_deploy" / "recipes" / f"{name}.yaml").read_bytes()
        assert "richkd_deploy/clip/configs/tiny-ViT.json" in infos
        entry_points = z.read(next(n for n in infos if n.endswith(".dist-info/entry_points.txt"))).decode()
        assert "richkd-deploy = richkd_deploy.cli:main" in entry_points
    with tarfile.open(installed.sdist) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name]
    assert _recipe_names(names) == RECIPES
    with zipfile.ZipFile(installed.sdist_wheel) as a, zipfile.ZipFile(installed.wheel) as b:
        assert sorted(a.namelist()) == sorted(b.namelist()), "a wheel built from the sdist lacks files"


def test_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    code = "import json, sys, richkd_deploy; print(json.dumps([richkd_deploy.__file__, sys.path]))"
    out = _run([installed.python, "-c", code], cwd=installed.work, env=installed.env)
    module_file, path = json.loads(out.stdout)
    assert Path(module_file).resolve().is_relative_to(installed.venv.resolve()), module_file
    assert str(REPO) not in [str(Path(p).resolve()) for p in path if p]


def test_installed_cli_lists_checks_and_copies_packaged_recipes(installed: Installed) -> None:
    assert installed.cli("--version").stdout.strip().endswith(__version__)
    listed = installed.cli("recipe", "list")
    rows = [line.split(None, 1) for line in listed.stdout.splitlines()]
    assert sorted(r[0] for r in rows) == RECIPES and all(len(r) == 2 and r[1].strip() for r in rows)
    assert str(installed.cache / "richkd-deploy" / "data") in listed.stderr  # where relative paths go
    checked = installed.cli("recipe", "check", "smoke")
    assert yaml.safe_load(checked.stdout)["name"] == "smoke"
    assert "# ok:" in checked.stderr and str(installed.venv) in checked.stderr
    installed.cli("recipe", "init", "smoke")
    copied = installed.work / "smoke.yaml"
    assert copied.read_bytes() == (REPO / "richkd_deploy" / "recipes" / "smoke.yaml").read_bytes()
    again = installed.cli("recipe", "init", "smoke", check=False)
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    copied.unlink()


def test_installed_cli_trains_the_packaged_smoke_recipe_by_name(installed: Installed) -> None:
    # RichKD L+F, so the packaged tiny CLIP config is needed too; small enough for ~20 s on 2 cores.
    out = installed.cli("train", "smoke", "-o", "data.train_limit=300", "-o", "data.test_limit=100",
                        "-o", "optim.epochs=1", "-o", "teacher.epochs=1", "--run-dir", "run", "--quiet")
    run = installed.work / "run"
    assert (run / "student.pt").is_file() and "done:" in out.stdout
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["name"] == "smoke" and Path(saved["source"]).resolve().is_relative_to(installed.venv.resolve())
