"""benchmarks/gpu_check.py runs only on GPU leases; its CPU self-test keeps it from rotting between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_self_test_fills_every_section(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(tmp_path), "--device", "cpu", "--quick"],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert set(sections) == {"train", "clip", "clip_ddp", "validate_ddp", "ort", "trt"}
    assert not any("section_error" in s for s in sections.values()), sections
    rows = sections["train"]["rows"]
    assert {(r["method"], r["variant"]) for r in rows} == {(m, v) for m in ("kd", "richkd_lf")
                                                          for v in ("eager", "channels_last")}
    assert all(r["images_per_s"] > 0 and "error" not in r for r in rows)
    assert next(r for r in rows if r["method"] == "kd" and r["variant"] == "eager")["ratio_to_kd_eager"] == 1.0
    clip = sections["clip"]
    assert clip["weights"].startswith("random") and clip["flops_per_image"] > 1e6
    assert 0 < clip["cache_fraction_of_roofline"] < 1 and 0 < clip["tower_fraction_of_roofline"] < 1
    for name, same in (("clip_ddp", "byte_identical"), ("validate_ddp", "results_identical")):
        assert [r["nproc"] for r in sections[name]["runs"]] == [1, 2] and sections[name][same] is True
    ort = sections["ort"]
    assert ort["provider"] == "CPUExecutionProvider" and ort["parity_max_abs_diff"] < 1e-4
    assert ort["parity_top1_agreement"] == 1.0 and set(ort["latency"]) == {"1", "8"}
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert sections["trt"]["importable"] is False
    # the table is printed last
    assert out.stdout.strip().splitlines()[-1].startswith("trt ")


def test_gpu_check_refuses_a_missing_gpu_in_one_line(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "no CUDA device" in out.stderr and "Traceback" not in out.stderr
