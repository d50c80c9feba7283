"""INT8 on onnxruntime's CPU path: which kernels run, and INT8 vs FP32 speed, in one run.

    python benchmarks/int8_recovery.py                       # fresh resnet8 + resnet8x4, random init
    python benchmarks/int8_recovery.py --arch resnet8 --budget 2

For each model: the FP32 ONNX graph and two Q/DQ INT8 graphs (symmetric activations,
the TensorRT-compatible default; asymmetric activations, `export.int8.symmetric_activations:
false`, which lets onnxruntime drop the float Relu between int8 kernels) are built from
the same random-init weights (kernel choice and timing do not depend on the weights),
calibrated on synthetic images through the eval transform. The symmetric graph is
written in both layouts of `export.int8.layout`: `int8` (cpu, what `export` writes
without --trt: each Relu folded into a uint8 QuantizeLinear, `exporters.int8_fold`) and
`int8-trt` (tensorrt, symmetric int8 everywhere: float DQ -> Relu -> Q stay between the
kernels on onnxruntime). Every graph runs as the file reads, in a plain session. Printed: the int8 / float
Conv-Gemm kernels and the float Relu/Clip and Q/DQ nodes left in onnxruntime's
optimized graph (`kernel_counts`), p50 latency and img/s at each batch size for all
graphs measured interleaved, INT8/FP32 throughput ratios, top-1 agreement of each INT8
graph with FP32 on the synthetic images, and the machine (ISA flags and load average:
the ratios depend on VNNI and on other load).

    python benchmarks/int8_recovery.py --recovery            # + the recovery table (below)
    python benchmarks/int8_recovery.py --no-kernels --recovery --recovery-arch MobileNetV2 --train-images 6000

`--recovery` trains a small residual CNN on 3,000 Fashion-MNIST images (about a
minute), then builds the failure the fallback exists for: channel 0 of one convolution's
output scaled by 1000 and the next convolution's weights for it divided by 1000 (the
same function in float, an outlier activation channel in int8). On it, each in one run:
plain MinMax, the method search, the fallback, and the fallback with corrupted
calibration copies; columns: test top-1 drop and agreement vs FP32 (1,000 test images),
corruption-accuracy drop (mean over 4 corruptions at severity 3, 500 test images), p50
at batch 1 and 64. The QAT row fine-tunes a copy of the trained model with fake
quantization (`richkd_deploy.train.qat.qat_arrays`: CE + KD towards the FP32 model's own
logits, as this model has no teacher; Adam at 1% of the training lr, cosine; SGD diverges on
the constructed failure, whose outlier channel makes one lr too large for some weights
and too small for others) and quantizes it with plain MinMax;
its drops are measured against the FP32 model before QAT. `--recovery-arch` trains a zoo
or torchvision/timm model instead of the constructed failure (e.g. timm/lcnet_075 with --epochs 6:
plain MinMax loses 3.0 points top-1 there); `--input-size` resizes the images (default 32 px).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kernel_report(arch: str, threads: int, batch_sizes: list[int], iters: int, budget_s: float) -> dict:
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
        for name, sym, fold in (("int8", True, True), ("int8-trt", True, False), ("int8-asym", False, False)):
            paths[name] = quantize_int8(paths["fp32"], array_batches(calibration, 64), Path(tmp) / f"{name}.onnx",
                                        Int8Options(symmetric_activations=sym, fold_relu=fold))
        sessions = {k: make_session(p, threads=threads) for k, p in paths.items()}
        ref = run_session(sessions["fp32"], check)
        for name in ("fp32", "int8", "int8-trt", "int8-asym"):
            counts = kernel_counts(paths[name])
            out[name] = {"kernels": counts["ops"], "int8_kernels": counts["int8"], "float_kernels": counts["float"],
                         "float_activations": counts["float_activations"], "quantize_ops": counts["quantize_ops"]}
            if name != "fp32":
                out[name]["agreement_with_fp32"] = agreement(ref, run_session(sessions[name], check))
            print(f"  {arch} {name:9s} kernels: {counts['int8']} int8, {counts['float']} float {counts['ops']}, "
                  f"{counts['float_activations']} float Relu/Clip, {counts['quantize_ops']} Q/DQ"
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


def recovery_table(threads: int, budget_s: float, arch: str | None = None, train_images: int = 3000,
                   epochs: int = 4, qat_epochs: int = 2, qat_lr: float = 3e-5, input_size: int = 32) -> list[dict]:
    import copy

    import numpy as np
    import torch
    from torch import nn

    from exporters.inputs import corrupted_arrays
    from exporters.int8_tune import Holdout, tune_int8
    from exporters.onnx_fp32 import export_onnx
    from richkd_deploy import data, models
    from richkd_deploy.evaluate.corruptions import corrupt
    from richkd_deploy.evaluate.latency import bench_callables
    from richkd_deploy.recipe import GatesConfig, Int8Config
    from richkd_deploy.runtime import agreement, top1
    from richkd_deploy.runtime.onnxruntime import make_session, run_session
    from richkd_deploy.runtime.predictions import eval_arrays
    from richkd_deploy.train.qat import qat_arrays

    class Net(nn.Module):
        def __init__(self, w: int = 16) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
            self.conv1 = nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
            self.conv2 = nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w))
            self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
            self.fc = nn.Linear(2 * w * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = torch.relu(x + self.conv2(self.conv1(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.down(x), 2), 1))

    name, size = "fashion-mnist", input_size
    mean, std = data.default_mean_std(name)
    n_train = train_images
    train = data.build_dataset(name, "train", limit=n_train + 600, seed=0)
    test = data.build_dataset(name, "test", limit=1000, seed=0)
    xtr, ytr = eval_arrays(train, size, mean, std)
    xte, yte = eval_arrays(test, size, mean, std)
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    net = Net() if arch is None else models.export_view(models.create_model(arch, num_classes=10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xtr[:n_train]), torch.from_numpy(ytr[:n_train])
    net.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n_train).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    print(f"recovery: trained {arch or 'the outlier CNN'} on {n_train} images at {size} px, {epochs} epochs, "
          f"{time.perf_counter() - t0:.0f} s")
    net.eval()
    if arch is None:  # the constructed failure: an outlier channel between conv1 and conv2
        with torch.no_grad():
            net.conv1[1].weight[0] *= 1000.0
            net.conv1[1].bias[0] *= 1000.0
            net.conv2[0].weight[:, 0] /= 1000.0
    names = ["gaussian_noise", "impulse_noise", "fog", "contrast"]
    test_c = corrupted_arrays(test, [f"{n}:3" for n in names], corrupt, size, mean, std, 0, limit=500)
    cal_c = corrupted_arrays(train, [f"{n}:3" for n in names[:2]], corrupt, size, mean, std, 0, limit=256)
    gates = GatesConfig()
    rows = []
    with tempfile.TemporaryDirectory(prefix="richkd-recovery-") as tmp:
        fp32 = export_onnx(net, Path(tmp) / "model.onnx", (3, size, size), 17, {})
        s32 = make_session(fp32, threads=threads)
        ref_test, ref_hold = run_session(s32, xte), run_session(s32, xtr[n_train:])
        holdout = Holdout(xtr[n_train:], ytr[n_train:], ref_hold, gates.max_top1_drop, gates.min_agreement)
        acc_c32 = np.mean([top1(run_session(s32, x), yte[:500]) for x in test_c.values()])
        clean_cal = xtr[:256]
        mixed_cal = np.concatenate([clean_cal, *cal_c.values()])
        plans = [("plain minmax", Int8Config(fallback=False), clean_cal),
                 ("method search", Int8Config(search=True, fallback=False), clean_cal),
                 ("fallback", Int8Config(), clean_cal),
                 ("fallback + corrupted calibration", Int8Config(), mixed_cal)]
        paths = {}
        sources = {label: fp32 for label, _, _ in plans}
        if qat_epochs > 0:  # QAT: the FP32 model's own logits are the target (this model has no teacher)
            label = f"QAT {qat_epochs} ep + plain minmax"
            student = copy.deepcopy(net)
            t0 = time.perf_counter()
            losses = qat_arrays(student, copy.deepcopy(net), xt, yt, qat_epochs, qat_lr, optimizer="adam")
            print(f"recovery: QAT {qat_epochs} epoch(s), Adam lr {qat_lr:g} cosine, target FP32 logits + CE: loss per epoch "
                  f"{', '.join(f'{v:.4f}' for v in losses)} ({time.perf_counter() - t0:.0f} s)")
            sources[label] = export_onnx(student, Path(tmp) / "qat.onnx", (3, size, size), 17, {})
            plans.append((label, Int8Config(fallback=False), clean_cal))
        for label, cfg, cal in plans:
            path = Path(tmp) / f"{len(paths)}.onnx"
            rec = tune_int8(sources[label], cal, path, cfg, holdout, lambda _m: None)
            paths[label] = path
            s8 = make_session(path, threads=threads)
            got = run_session(s8, xte)
            acc_c8 = np.mean([top1(run_session(s8, x), yte[:500]) for x in test_c.values()])
            rows.append({"row": label, "chosen": rec["chosen"], "layers_in_float": rec["layers_in_float"],
                         "passes_on_holdout": rec["passes_on_holdout"],
                         "holdout_steps": [{k: r.get(k) for k in ("step", "holdout_top1", "agreement_with_fp32", "passes")}
                                           for r in rec["candidates"] + rec["fallback_steps"]],
                         "top1_drop": top1(ref_test, yte) - top1(got, yte), "agreement": agreement(ref_test, got),
                         "corruption_drop": float(acc_c32 - acc_c8)})
        fns = {"fp32": (lambda x, s=s32: run_session(s, x))}
        fns.update({k: (lambda x, s=make_session(p, threads=threads): run_session(s, x)) for k, p in paths.items()})
        lat = bench_callables(fns, (3, size, size), (1, 64), iters=100, budget_s=budget_s)
    print(f"recovery table (FP32 test top-1 {top1(ref_test, yte):.4f}, corrupted {acc_c32:.4f}):")
    print(f"  {'':34s} {'top-1 drop':>10s} {'agreement':>9s} {'corr. drop':>10s} {'p50 b1':>8s} {'p50 b64':>8s}  float layers")
    print(f"  {'fp32':34s} {'':>10s} {'':>9s} {'':>10s} {lat[1]['fp32'].p50_ms:8.3f} {lat[64]['fp32'].p50_ms:8.2f}")
    for r in rows:
        r["p50_ms_b1"], r["p50_ms_b64"] = lat[1][r["row"]].p50_ms, lat[64][r["row"]].p50_ms
        print(f"  {r['row']:34s} {r['top1_drop'] * 100:+9.2f}p {r['agreement']:9.4f} {r['corruption_drop'] * 100:+9.2f}p "
              f"{r['p50_ms_b1']:8.3f} {r['p50_ms_b64']:8.2f}  {len(r['layers_in_float'])} ({r['chosen']})")
    return rows


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
    p.add_argument("--recovery", action="store_true", help="also the recovery table on a model built to fail")
    p.add_argument("--no-kernels", action="store_true", help="skip the kernel/speed part")
    p.add_argument("--recovery-arch", default=None, help="a zoo model trained instead of the outlier CNN")
    p.add_argument("--train-images", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--qat-epochs", type=int, default=2, help="recovery table: QAT epochs (0: no QAT row)")
    p.add_argument("--qat-lr", type=float, default=3e-5,
                   help="recovery table: QAT Adam learning rate, cosine (default 1%% of the training lr)")
    p.add_argument("--input-size", type=int, default=32,
                   help="recovery table: image side in px (Fashion-MNIST resized; larger inputs give heavier activation tails)")
    args = p.parse_args(argv)
    threads = args.threads or default_threads()
    info = machine_info()
    print(describe_machine(info))
    report = {"machine": info, "models": [] if args.no_kernels else
              [kernel_report(a, threads, args.batch_sizes, args.iters, args.budget) for a in args.arch]}
    if args.recovery:
        report["recovery"] = recovery_table(threads, args.budget, args.recovery_arch, args.train_images, args.epochs,
                                            args.qat_epochs, args.qat_lr, args.input_size)
    report["machine_after"] = describe_machine()
    print(report["machine_after"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
