"""Latency of the exported artifacts vs PyTorch eager, measured side by side.

    python benchmarks/export_latency.py                 # fresh resnet8x4, random init
    python benchmarks/export_latency.py --run runs/edge # a trained, exported run

Prints, for batch 1 and 64: p50/p90/p99 latency and throughput of torch eager,
onnxruntime FP32 and onnxruntime Q/DQ INT8, each as a ratio to torch eager (all
measured interleaved in this one run, same thread count), plus the machine. Timing
does not depend on the weights, so random init is fine for the fresh model; the
INT8 model is calibrated on generated images through the eval transform.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fresh_model_report(arch: str, threads: int, batch_sizes: list[int], iters: int, budget_s: float) -> dict:
    import torch

    from exporters.inputs import array_batches
    from exporters.int8 import quantize_int8
    from exporters.onnx_fp32 import export_onnx
    from richkd_deploy import data, models
    from richkd_deploy.evaluate.latency import bench_backends, make_cpu_backends
    from richkd_deploy.runtime.predictions import eval_arrays

    torch.manual_seed(0)
    view = models.export_view(models.create_model(arch, num_classes=100)).eval()
    mean, std = data.default_mean_std("synthetic")
    calibration, _ = eval_arrays(data.build_dataset("synthetic", "train", limit=128), 32, mean, std)
    with tempfile.TemporaryDirectory(prefix="richkd-bench-") as tmp:
        fp32 = export_onnx(view, Path(tmp) / "model.onnx", (3, 32, 32), 17, {"arch": arch})
        int8 = quantize_int8(fp32, array_batches(calibration, 64), Path(tmp) / "model.int8.onnx")
        backends = make_cpu_backends(view, fp32, int8, threads)
        print(f"bench: fresh {arch} (random init), input [3, 32, 32]")
        report = bench_backends(backends, (3, 32, 32), threads, batch_sizes, iters=iters, budget_s=budget_s)
    report["arch"] = arch
    return report


def main(argv: list[str] | None = None) -> int:
    from richkd_deploy.evaluate.latency import bench_run
    from richkd_deploy.runtime.onnxruntime import default_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="an exported run folder (default: a fresh model)")
    p.add_argument("--arch", default="resnet8x4")
    p.add_argument("--threads", type=int, default=None, help="default: the usable CPU cores")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--iters", type=int, default=200, help="most timed rounds per batch size")
    p.add_argument("--budget", type=float, default=5.0, help="seconds per backend per batch size before stopping")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    threads = args.threads or default_threads()
    if args.run:
        report = bench_run(args.run, args.batch_sizes, threads, iters=args.iters, budget_s=args.budget)
    else:
        report = fresh_model_report(args.arch, threads, args.batch_sizes, args.iters, args.budget)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
