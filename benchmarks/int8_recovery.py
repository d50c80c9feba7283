"""INT8 on onnxruntime's CPU path: which kernels run, and INT8 vs FP32 speed, in one run.

    python benchmarks/int8_recovery.py                       # fresh resnet8 + resnet8x4, random init
    python benchmarks/int8_recovery.py --arch resnet8 --budget 2

For each model: the FP32 ONNX graph and two Q/DQ INT8 graphs (symmetric activations,
the TensorRT-compatible default; asymmetric activations, `export.int8.symmetric_activations:
false`, which lets onnxruntime drop the float Relu between int8 kernels) are built from
the same random-init weights (kernel choice and timing do not depend on the weights),
calibrated on synthetic images through the eval transform. Printed: the int8 / float
Conv-Gemm kernels in onnxruntime's optimized graph (`kernel_counts`), p50 latency and
img/s at each batch size for all three measured interleaved, INT8/FP32 throughput
ratios, top-1 agreement of each INT8 graph with FP32 on the synthetic images, and the
machine (ISA flags and load average: the ratios depend on VNNI and on other load).

Not yet here (issue 15 item 7): the accuracy recovery table (plain MinMax, method search,
fallback, QAT on a model where post-training quantization loses accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kernel_report(arch: str, threads: int, batch_sizes: list[int], iters: int, budget_s: float) -> dict:
    import numpy as np
    import torch

    from exporters.inputs import array_batches
    from exporters.int8 import Int8Options, quantize_int8
    from exporters.onnx_fp32 import export_onnx
    from richkd_deploy import data, models
    from richkd_deploy.evaluate.latency import bench_callables
    from richkd_deploy.runtime import agreement
    from richkd_deploy.runtime.onnxruntime import kernel_counts, make_session, run_session
    from richkd_deploy.runtime.predictions import eval_arrays

    torch.manual_seed(0)
    view = models.export_view(models.create_model(arch, num_classes=100)).eval()
    mean, std = data.default_mean_std("synthetic")
    images, _ = eval_arrays(data.build_dataset("synthetic", "train", limit=384), 32, mean, std)
    calibration, check = images[:256], images[256:]
    out: dict = {"arch": arch, "threads": threads}
    with tempfile.TemporaryDirectory(prefix="richkd-int8-bench-") as tmp:
        paths = {"fp32": export_onnx(view, Path(tmp) / "model.onnx", (3, 32, 32), 17, {"arch": arch})}
        for name, sym in (("int8", True), ("int8-asym", False)):
            paths[name] = quantize_int8(paths["fp32"], array_batches(calibration, 64), Path(tmp) / f"{name}.onnx",
                                        Int8Options(symmetric_activations=sym))
        sessions = {k: make_session(p, threads=threads) for k, p in paths.items()}
        ref = run_session(sessions["fp32"], check)
        for name in ("fp32", "int8", "int8-asym"):
            counts = kernel_counts(paths[name])
            out[name] = {"kernels": counts["ops"], "int8_kernels": counts["int8"], "float_kernels": counts["float"]}
            if name != "fp32":
                out[name]["agreement_with_fp32"] = agreement(ref, run_session(sessions[name], check))
            print(f"  {arch} {name:9s} kernels: {counts['int8']} int8, {counts['float']} float {counts['ops']}"
                  + (f"; top-1 agreement with FP32 {out[name]['agreement_with_fp32']:.4f} on {len(check)} images"
                     if name != "fp32" else ""))
        fns = {k: (lambda x, s=s: run_session(s, x)) for k, s in sessions.items()}
        results = bench_callables(fns, (3, 32, 32), batch_sizes, iters=iters, budget_s=budget_s)
        for bs, stats in results.items():
            base = stats["fp32"]
            for name, st in stats.items():
                ratio = st.throughput_ips / base.throughput_ips
                p50_ratio = base.p50_ms / st.p50_ms
                out[name][f"batch{bs}"] = {**st.to_dict(), "throughput_vs_fp32": ratio, "p50_speedup_vs_fp32": p50_ratio}
                print(f"  {arch} batch {bs:3d} {name:9s} p50 {st.p50_ms:8.3f} ms  {st.throughput_ips:9.0f} img/s  "
                      f"{ratio:5.2f}x FP32 img/s, {p50_ratio:5.2f}x FP32 p50")
    return out


def main(argv: list[str] | None = None) -> int:
    from richkd_deploy.evaluate.latency import describe_machine, machine_info
    from richkd_deploy.runtime.onnxruntime import default_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["resnet8", "resnet8x4"])
    p.add_argument("--threads", type=int, default=None, help="default: the usable CPU cores")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--iters", type=int, default=200, help="most timed rounds per batch size")
    p.add_argument("--budget", type=float, default=3.0, help="seconds per graph per batch size before stopping")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    threads = args.threads or default_threads()
    info = machine_info()
    print(describe_machine(info))
    report = {"machine": info, "models": [kernel_report(a, threads, args.batch_sizes, args.iters, args.budget)
                                          for a in args.arch]}
    report["machine_after"] = describe_machine()
    print(report["machine_after"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
