"""benchmarks/corruptions.py edge mode: per-cell speed and strength against the reference, in one tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("imagecorruptions")


def test_edge_mode_prints_and_writes_speed_and_strength_per_cell(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "benchmarks/corruptions.py", "--size", "48", "--n", "4", "--ref-n", "1", "--strength-n", "3",
           "--names", "pixelate,frost", "--severities", "1,5", "--threads", "1", "--json", str(out)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "strength on 3 images" in run.stdout and "TOTAL" in run.stdout and "machine" in run.stdout.lower()
    speed = json.loads(out.read_text())["speed"]
    assert speed["strength_images"] == 3 and speed["ref_images_timed"] == 1
    cells = {(c["name"], c["severity"]): c for c in speed["cells"]}
    assert set(cells) == {("pixelate", 1), ("pixelate", 5), ("frost", 1), ("frost", 5)}
    for cell in cells.values():
        assert cell["ours_wall"] > 0 and cell["ref_wall"] > 0 and cell["strength_ref"] > 0
    # pixelate is deterministic and exact: the same strength as the reference on the same images
    assert cells[("pixelate", 5)]["strength_ours"] == pytest.approx(cells[("pixelate", 5)]["strength_ref"], rel=1e-6)
