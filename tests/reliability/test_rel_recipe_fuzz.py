"""Issue 7.5: fuzzed recipes through `richkd-deploy recipe check`: always exit 0 or 2,
never a traceback, never a file written anywhere (cwd, HOME and the recipe's own folder
stay as they were).

The bulk (500 examples) runs in-process through `richkd_deploy.cli.main` (the console
script's own function, so RichKDError -> one line + exit 2 is the code under test);
20 more go through the real `python -m richkd_deploy` and must behave identically."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.rel_helpers import assert_result_error, env, invoke
from tests.train.helpers import REPO, SMOKE

BASE: dict[str, Any] = yaml.safe_load(SMOKE.read_text())


def _paths(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _paths(v, prefix + k + ".")
    return out


# every key of the smoke recipe, plus keys it leaves at their defaults (paths, lists, literals)
PATHS = sorted(set(_paths(BASE)) | {"data.root", "data.mean", "data.std", "teacher.checkpoint", "teacher.sha256",
                                    "clip.templates", "clip.logit_scale", "optim.milestones", "export.precisions",
                                    "validate.corruptions.source", "validate.gates.max_ece", "validate.test_limit",
                                    "source", "name"})
ODD_STRINGS = ["", " ", ".", "..", "../../../../etc/passwd", "/", "/dev/null", "/proc/self/mem", "~", "~/x",
               "C:\\Windows", "\\\\server\\share", "runs/../../x", "a\nb", "a\rb", "\t", "\u202e\u0000x", "💥", "名前",
               "${HOME}", "$(touch pwned)", "`touch pwned`", "%s%n%x", "{}", "{0}", "null", "~null", "NaN", ".inf",
               "yes", "0x1F", "0o17", "1e400", "-0", "fp32", "int8", "cifar100", "imagefolder", "resnet8", "learned",
               "online", "none", "http://127.0.0.1:1/x.pth", "file:///etc/passwd", "a" * 300, "é" * 5000]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=10**300, max_value=10**1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(ODD_STRINGS),
)
keys = st.one_of(st.text(max_size=12), st.sampled_from(PATHS), st.integers(-3, 3), st.booleans())
junk = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                        st.dictionaries(keys, children, max_size=4)), max_leaves=10)


def _set(data: dict[str, Any], path: str, value: Any, op: str) -> None:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:  # a section an earlier mutation replaced by junk stays junk
        if isinstance(node, dict) and node.get(part) is None:
            node[part] = {}
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return
    if op == "delete":
        node.pop(last, None)
    elif op == "listify":
        node[last] = [node.get(last)]
    elif op == "extra":
        node[f"{last}_extra"] = value
    else:
        node[last] = value


@st.composite
def mutated_recipe(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        _set(data, draw(st.sampled_from(PATHS)), draw(junk), draw(st.sampled_from(["set", "set", "delete", "listify",
                                                                                   "extra"])))
    return data


RAW_DOCUMENTS = ["", "---\n", "- a\n- b\n", "42\n", "just a string\n", "{", "name: [unclosed\n", "\t\tname: x\n",
                 "name: x\nname: y\n", "? [a, b]\n: c\n", "a: &a [*a]\n", "data: &d {x: *d}\n", "!!python/object:os.system {}\n",
                 "optim: !!binary aGVsbG8=\n", "seed: 2020-13-45\n", "seed: " + "9" * 5000 + "\n",
                 "a: " + "[" * 200 + "]" * 200 + "\n", "%YAML 1.1\n---\nname: x\n", "name: x\n...\n---\nname: y\n"]
documents = st.one_of(
    mutated_recipe().map(lambda d: yaml.safe_dump(d, allow_unicode=True, sort_keys=False).encode("utf-8")),
    mutated_recipe().map(lambda d: yaml.safe_dump(d, allow_unicode=True, sort_keys=False).encode("utf-8")),
    junk.map(lambda d: yaml.safe_dump(d, allow_unicode=True, sort_keys=False).encode("utf-8")),
    st.sampled_from(RAW_DOCUMENTS).map(str.encode),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
)
overrides = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(PATHS), st.one_of(st.text(max_size=20), st.sampled_from(ODD_STRINGS))),
    st.text(max_size=20),
), max_size=2)


def _tree(*folders: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for folder in folders for p in [folder, *folder.rglob("*")]}


class Sandbox:
    """cwd, HOME and the folder holding the recipe: all three must be left as found."""

    def __init__(self, root: Path) -> None:
        self.cwd, self.home, self.inbox = root / "cwd", root / "home", root / "in"
        for d in (self.cwd, self.home, self.inbox):
            d.mkdir()
        self.recipe = self.inbox / "recipe.yaml"
        self.recipe.write_bytes(b"")

    def write(self, doc: bytes) -> tuple[Path, dict[str, tuple[int, int]]]:
        self.recipe.write_bytes(doc)
        return self.recipe, _tree(self.cwd, self.home, self.inbox)

    def unchanged_since(self, before: dict[str, tuple[int, int]]) -> None:
        assert _tree(self.cwd, self.home, self.inbox) == before


def _args(recipe: Path, ovs: list[str]) -> list[str]:
    return ["recipe", "check", str(recipe), *(f"--override={o}" for o in ovs)]


def _check(result: Any) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.stderr
    if result.exit_code == 2:
        assert_result_error(result, 2)
    else:
        assert "# ok:" in result.stderr and yaml.safe_load(result.stdout)["name"]


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    box = Sandbox(tmp_path)
    monkeypatch.chdir(box.cwd)
    monkeypatch.setenv("HOME", str(box.home))
    return box


def test_500_fuzzed_recipes_in_process(sandbox: Sandbox) -> None:
    seen = {"n": 0, "ok": 0}

    @settings(max_examples=500, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(doc=documents, ovs=overrides)
    def check(doc: bytes, ovs: list[str]) -> None:
        recipe, before = sandbox.write(doc)
        result = invoke(*_args(recipe, ovs))
        _check(result)
        sandbox.unchanged_since(before)
        seen["n"] += 1
        seen["ok"] += result.exit_code == 0

    check()
    assert seen["n"] >= 500
    assert 0 < seen["ok"] < seen["n"]  # the generator reaches both valid and invalid recipes


def test_fuzzed_recipes_through_the_real_entry_point(sandbox: Sandbox) -> None:
    """The console entry in a real process gives the same exit code and the same line."""
    seen = {"n": 0}

    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(doc=documents, ovs=overrides.map(lambda o: [x.replace("\x00", "") for x in o]))
    def check(doc: bytes, ovs: list[str]) -> None:
        recipe, before = sandbox.write(doc)
        inproc = invoke(*_args(recipe, ovs))
        out = subprocess.run([sys.executable, "-m", "richkd_deploy", *_args(recipe, ovs)], cwd=sandbox.cwd,
                             env=env(HOME=str(sandbox.home), PYTHONIOENCODING="utf-8", PYTHONPATH=str(REPO)),
                             capture_output=True, timeout=120)
        stderr = out.stderr.decode("utf-8", "replace")
        assert out.returncode in (0, 2) and "Traceback" not in stderr, stderr
        assert out.returncode == inproc.exit_code, (stderr, inproc.stderr)
        assert stderr.splitlines()[:1] == inproc.stderr.splitlines()[:1]
        sandbox.unchanged_since(before)
        seen["n"] += 1

    check()
    assert seen["n"] >= 20


HOSTILE = {  # found by fuzzing: each was a traceback (or a hang) before
    "alias-loop": ("data: &a [*a]\n", (), "refers to itself"),
    "5000-digit-int": ("seed: " + "9" * 5000 + "\n", (), "a value cannot be read"),
    "5000-digit-override": ("name: x\n", ("seed=" + "9" * 5000,), "seed: got"),
    "deep-nesting": ("a: " + "[" * 3000 + "]" * 3000 + "\n", (), "nested too deeply"),
    "billion-laughs": ("a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)),
        (), "more than"),
    "bad-date": ("seed: 2020-13-45\n", (), "a value cannot be read"),
    "newline-in-key": ('"a\\nb": 1\n', (), "a\\nb: unknown key"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_yaml_is_one_line_exit_2(sandbox: Sandbox, case: str) -> None:
    text, ovs, fragment = HOSTILE[case]
    recipe, before = sandbox.write(text.encode())
    assert_result_error(invoke(*_args(recipe, list(ovs))), 2, fragment)
    sandbox.unchanged_since(before)


def test_sandbox_detects_a_write(sandbox: Sandbox) -> None:
    """Positive control for `unchanged_since`."""
    _, before = sandbox.write(b"name: x\n")
    (Path(os.environ["HOME"]) / ".cache").mkdir()
    with pytest.raises(AssertionError):
        sandbox.unchanged_since(before)
