"""`richkd-deploy bench`: latency and throughput of the exported artifacts vs PyTorch.

Numbers from a shared 2-core machine drift by tens of percent between minutes, so
bare times are not comparable across runs. Everything here is measured *in one
run, interleaved* (each iteration calls every backend once, in rotating order) with
the same thread count for torch and onnxruntime, and reported as ratios to PyTorch
eager, which are what a reader can compare between machines.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from richkd_deploy.errors import ArtifactError
from richkd_deploy.manifest import Manifest, read_manifest
from richkd_deploy.runs import RunDir
from richkd_deploy.runtime import OnnxRuntime, Runtime, TorchRuntime, create_runtime
from richkd_deploy.runtime.onnxruntime import default_threads

Log = Callable[[str], None]
BASELINE = "torch-eager"


@dataclass(frozen=True)
class LatencyStats:
    batch: int
    iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_ips: float  # images per second at this batch size

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(times_s: Sequence[float], batch: int) -> LatencyStats:
    t = np.asarray(times_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    mean = float(t.mean())
    return LatencyStats(batch, int(t.size), float(p50), float(p90), float(p99), mean, batch / (mean / 1000.0))


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on. Every benchmark prints it, load average
    included: on a shared 2-core machine the load explains most of the variance."""
    info: dict[str, Any] = {"machine": platform.machine(), "system": platform.system(),
                            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), None)
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["cpu"] = model
        info["simd"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    except OSError:
        info["cpu"] = platform.processor() or None
    for name in ("torch", "onnxruntime"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    info["torch_threads"] = torch.get_num_threads()
    info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    info["load_average"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return info


def describe_machine(info: Mapping[str, Any] | None = None) -> str:
    """`machine_info()` as one line for a benchmark's printout."""
    m = dict(info or machine_info())
    load = m.get("load_average")
    return (f"machine: {m.get('cpu')} ({m.get('cpus_usable', m.get('cpu_count'))} usable cores, "
            f"{'/'.join(m.get('simd') or []) or 'no AVX2'}), python {m.get('python')}, torch {m.get('torch')} "
            f"({m.get('torch_threads')} threads), onnxruntime {m.get('onnxruntime')}, "
            f"load average {', '.join(f'{v:.1f}' for v in load) if load else '?'}")


def bench_callables(fns: Mapping[str, Callable[[np.ndarray], Any]], input_shape: Sequence[int],
                    batch_sizes: Sequence[int] = (1, 64), warmup: int = 10, iters: int = 100,
                    budget_s: float = 3.0, min_iters: int = 10, seed: int = 0) -> dict[int, dict[str, LatencyStats]]:
    """Interleaved timing of every callable at every batch size.

    Each batch size runs `warmup` untimed calls per callable, then up to `iters`
    rounds in which every callable runs once (order rotated each round, so none
    always runs first after another's cache pollution); a batch size stops early
    once every callable has spent `budget_s` and done `min_iters` rounds.
    """
    rng = np.random.default_rng(seed)
    names = list(fns)
    results: dict[int, dict[str, LatencyStats]] = {}
    for bs in batch_sizes:
        x = rng.standard_normal((bs, *input_shape)).astype(np.float32)
        for name in names:
            for _ in range(warmup):
                fns[name](x)
        times: dict[str, list[float]] = {n: [] for n in names}
        spent = dict.fromkeys(names, 0.0)
        for i in range(iters):
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                t0 = time.perf_counter()
                fns[name](x)
                dt = time.perf_counter() - t0
                times[name].append(dt)
                spent[name] += dt
            if i + 1 >= min_iters and min(spent.values()) >= budget_s:
                break
        results[bs] = {n: summarize(times[n], bs) for n in names}
    return results


def ratios(results: Mapping[int, Mapping[str, LatencyStats]], baseline: str = BASELINE) -> dict[int, dict[str, float]]:
    """Speed-up of every backend over `baseline` per batch size (p50 latency ratio)."""
    return {bs: {n: r[baseline].p50_ms / s.p50_ms for n, s in r.items()} for bs, r in results.items() if baseline in r}


def format_table(results: Mapping[int, Mapping[str, LatencyStats]], baseline: str = BASELINE) -> str:
    rat = ratios(results, baseline)
    lines = [f"{'batch':>5}  {'backend':<22} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>9} "
             f"{'vs ' + baseline:>16}"]
    for bs, r in results.items():
        for name, s in r.items():
            lines.append(f"{bs:>5}  {name:<22} {s.p50_ms:>9.2f} {s.p90_ms:>9.2f} {s.p99_ms:>9.2f} "
                         f"{s.throughput_ips:>9.0f} {rat.get(bs, {}).get(name, float('nan')):>15.2f}x")
    return "\n".join(lines)


def bench_backends(backends: Mapping[str, Any], input_shape: Sequence[int], threads: int,
                   batch_sizes: Sequence[int] = (1, 64), warmup: int = 10, iters: int = 100,
                   budget_s: float = 3.0, log: Log = print) -> dict[str, Any]:
    """Time runtimes (already created with `threads`) and build the report."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = bench_callables({n: b.predict for n, b in backends.items()}, input_shape, batch_sizes, warmup,
                                  iters, budget_s)
    finally:
        torch.set_num_threads(previous)
    rat = ratios(results)
    report: dict[str, Any] = {
        "threads": threads,
        "machine": machine_info(),
        "baseline": BASELINE,
        "results": {str(bs): {n: s.to_dict() for n, s in r.items()} for bs, r in results.items()},
        "speedup_vs_torch": {str(bs): r for bs, r in rat.items()},
    }
    if all(n in next(iter(results.values()), {}) for n in ("onnxruntime-fp32", "onnxruntime-int8")):
        report["int8_vs_fp32"] = {str(bs): r["onnxruntime-fp32"].p50_ms / r["onnxruntime-int8"].p50_ms
                                  for bs, r in results.items()}
    log(f"threads: {threads} (torch.set_num_threads and onnxruntime intra_op_num_threads)")
    log(describe_machine(report["machine"]))
    log(format_table(results))
    if "int8_vs_fp32" in report:
        log("int8 vs fp32 (onnxruntime): " + ", ".join(f"batch {bs}: {v:.2f}x" for bs, v in report["int8_vs_fp32"].items()))
    return report


def make_cpu_backends(student: Any, onnx_fp32: Path | None, onnx_int8: Path | None, threads: int,
                      manifest: Any = None, extra: Mapping[str, Path] | None = None) -> dict[str, Runtime]:
    """torch eager + onnxruntime FP32/INT8 (and `extra`: {label: onnx path}) on the CPU
    with one thread count.

    `student` is an nn.Module or a student.pt path; artifact paths are verified
    against `manifest` (see `runtime.create_runtime`)."""
    runtimes: dict[str, Runtime] = {}
    if isinstance(student, (str, Path)):
        runtimes[BASELINE] = create_runtime(student, manifest=manifest if manifest is not None else False,
                                            name=BASELINE)
    else:
        runtimes[BASELINE] = TorchRuntime(student, name=BASELINE)
    onnx = {"onnxruntime-fp32": onnx_fp32, "onnxruntime-int8": onnx_int8, **(extra or {})}
    for name, path in onnx.items():
        if path is None:
            continue
        if manifest is not None:
            runtimes[name] = create_runtime(path, provider="cpu", manifest=manifest, threads=threads)
        else:
            runtimes[name] = OnnxRuntime(path, "cpu", threads)
    return runtimes


def onnx_files(manifest: Manifest) -> dict[str, Path]:
    """The manifest's ONNX artifacts by bench label: the precision, or the entry's own
    label (`fp32-calibrated` for validate --calibrate's model, which is not the FP32 export)."""
    files: dict[str, Path] = {}
    for a in manifest["artifacts"]:
        if a["kind"] != "onnx":
            continue
        label = a.get("label") or (f"{a['precision']}-calibrated" if a.get("temperature") is not None
                                   else a["precision"])
        files.setdefault(label, manifest.export_dir / a["file"])
    return files


def bench_run(run_dir: Path, batch_sizes: Sequence[int] = (1, 64), threads: int | None = None, warmup: int = 10,
              iters: int = 100, log: Log = print, budget_s: float = 3.0) -> dict[str, Any]:
    """The `richkd-deploy bench [RUN]` command: torch eager vs onnxruntime FP32 and INT8
    (and the temperature-calibrated FP32 model when there is one) of an exported run,
    latency p50/p90/p99 and throughput per batch size, as ratios to torch eager. Raises
    ArtifactError when the run has no export or an artifact changed since export."""
    run = RunDir(Path(run_dir))
    manifest = read_manifest(run.root)
    threads = int(threads or default_threads())
    files = onnx_files(manifest)
    if "fp32" not in files:
        raise ArtifactError(f"{manifest.path} lists no FP32 ONNX model; re-export with richkd-deploy export --force")
    input_shape = [d for d in manifest.get("input", {}).get("shape", [])[1:]]
    if len(input_shape) != 3:
        raise ArtifactError(f"{manifest.path} does not record the input shape; re-export with richkd-deploy export --force")
    extra = {f"onnxruntime-{label}": p for label, p in files.items() if label not in ("fp32", "int8", "fp16")}
    backends = make_cpu_backends(run.student, files["fp32"], files.get("int8"), threads, manifest=manifest,
                                 extra=extra)
    log(f"bench {run.root}: {manifest.get('arch')} input {input_shape}, batch sizes {list(batch_sizes)}")
    report = bench_backends(backends, input_shape, threads, batch_sizes, warmup, iters, budget_s, log)
    report["run"] = str(run.root)
    report["arch"] = manifest.get("arch")
    return report
