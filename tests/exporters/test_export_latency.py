"""bench: interleaved timing, ratios to torch eager, one thread count for everyone."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from exporters.pipeline import export_run
from richkd_deploy.errors import ArtifactError
from richkd_deploy.evaluate.latency import bench_callables, bench_run, format_table, ratios, summarize

from .helpers import make_run, quiet_log


def test_summarize_percentiles_and_throughput() -> None:
    s = summarize([0.001] * 98 + [0.002, 0.010], batch=4)
    assert s.p50_ms == pytest.approx(1.0) and s.p99_ms > 1.0 and s.iters == 100
    assert s.throughput_ips == pytest.approx(4 / (np.mean([0.001] * 98 + [0.002, 0.010])))


def test_bench_callables_interleaves_and_reports_ratios() -> None:
    calls: list[str] = []

    def slow(x: np.ndarray) -> None:
        calls.append("slow")
        time.sleep(0.002)

    def fast(x: np.ndarray) -> None:
        calls.append("fast")
        time.sleep(0.0005)

    res = bench_callables({"torch-eager": slow, "fast": fast}, (1, 2, 2), batch_sizes=(1, 8), warmup=1, iters=12,
                          budget_s=0.0, min_iters=5)
    assert set(res) == {1, 8} and res[1]["fast"].iters == 5
    assert calls[2:6] == ["slow", "fast", "fast", "slow"]  # rotated order per round
    r = ratios(res)
    assert r[1]["torch-eager"] == 1.0 and r[1]["fast"] > 1.5
    assert "torch-eager" in format_table(res)


def test_bench_run_on_an_exported_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "exp")
    with pytest.raises(ArtifactError, match="run richkd-deploy export first"):
        bench_run(run, log=quiet_log)
    export_run(run, quiet=True, log=quiet_log)
    lines: list[str] = []
    report = bench_run(run, batch_sizes=(1, 4), threads=1, warmup=1, iters=3, log=lines.append, budget_s=0.0)
    assert report["threads"] == 1 and lines[0].startswith("bench ")
    assert any(line.startswith("threads: 1") for line in lines)
    assert set(report["results"]["4"]) == {"torch-eager", "onnxruntime-fp32", "onnxruntime-int8"}
    assert report["speedup_vs_torch"]["1"]["torch-eager"] == 1.0
    assert set(report["int8_vs_fp32"]) == {"1", "4"}
    assert report["machine"]["cpu_count"] >= 1
    (run / "export" / "model.int8.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="changed since export"):
        bench_run(run, batch_sizes=(1,), threads=1, warmup=0, iters=1, log=quiet_log)
