"""The dependency rules of DESIGN.md, checked on the import statements themselves:
exporters/ never imports the training package, evaluate/ imports neither training nor
exporters (QAT lives in train/qat.py and the CLI hands its output to the exporter)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names


@pytest.mark.parametrize("folder, forbidden", [
    ("exporters", ("richkd_deploy.train",)),
    ("richkd_deploy/evaluate", ("richkd_deploy.train", "exporters")),
])
def test_no_import_against_the_layering(folder: str, forbidden: tuple[str, ...]) -> None:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files
    bad = [f"{f.relative_to(REPO)}: {name}" for f in files for name in imported_modules(f)
           if any(name == p or name.startswith(p + ".") for p in forbidden)]
    assert not bad, bad


def test_the_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from richkd_deploy.train.qat import qat_run\n")
    assert "richkd_deploy.train.qat" in imported_modules(probe)
