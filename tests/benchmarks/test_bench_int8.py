"""benchmarks/int8_recovery.py: the kernel/speed report fills every field (tiny budget)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "int8_recovery.py"


def _load():
    spec = importlib.util.spec_from_file_location("int8_recovery", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["int8_recovery"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_kernel_report_counts_int8_kernels_and_times_every_graph() -> None:
    report = _load().kernel_report("resnet8", 1, [1], iters=2, budget_s=0.0)
    assert report["fp32"]["int8_kernels"] == 0 and report["fp32"]["float_kernels"] == 10
    assert report["int8"]["kernels"] == {"QGemm": 1, "QLinearConv": 9} and report["int8"]["float_kernels"] == 0
    assert report["int8"]["float_activations"] == 0 and report["int8-trt"]["float_activations"] == 7
    assert report["int8-trt"]["kernels"] == report["int8"]["kernels"]
    for name in ("fp32", "int8", "int8-trt", "int8-asym"):
        assert report[name]["batch1"]["p50_ms"] > 0 and report[name]["batch1"]["throughput_vs_fp32"] > 0
    assert 0 <= report["int8"]["agreement_with_fp32"] <= 1


def test_recovery_input_size_reaches_the_recovery_table(monkeypatch) -> None:
    mod = _load()
    seen = {}
    monkeypatch.setattr(mod, "recovery_table", lambda *a, **k: seen.setdefault("args", a) and [])
    assert mod.main(["--no-kernels", "--recovery", "--recovery-arch", "timm/lcnet_050", "--input-size", "48"]) == 0
    assert seen["args"][2] == "timm/lcnet_050" and seen["args"][-1] == 48
