"""Everything GPU-only in richkd-deploy, checked and timed in one run.

GPU time comes in short leases, so this is the one prepared script to run on an
NVIDIA machine (`bash benchmarks/gpu_check.sh OUT_DIR`). Each section is
independent: one that fails is recorded with its error and the others still run.
It prints a short table last and writes every figure to OUT_DIR/gpu_check.json.

Sections:
  train    training images/s of KD and RichKD L+F (cached CLIP targets), resnet32x4
           -> resnet8x4, AMP, batch 64 and 256, eager / channels_last / torch.compile,
           each as a ratio to KD eager at the same batch
  clip     CLIP cache throughput of a random-weight ViT-L-14 at 224 px: the real
           build_clip_cache pipeline (PIL preprocessing in DataLoader workers) and the
           bare image tower on device-resident tensors, each as a fraction of what
           the measured bf16 matmul rate allows for the tower's FLOPs per image
  clip_ddp the CLIP cache built by 1 process vs 2 torchrun ranks (`clip.shards`), and
           whether the two caches are byte-identical (benchmarks/scaleout.py)
  validate_ddp  `validate --nproc 1` vs `--nproc 2` on an exported random resnet8 run,
           and whether results.json is identical minus timestamps and timings
  ort      onnxruntime CUDA provider (if the installed onnxruntime has it): parity
           with PyTorch and latency at batch 1 and 256
  trt      whether `tensorrt` imports; if it does, FP16 and INT8 engines of the
           student, their parity, and `pytest -m trt`

`--quick --device cpu` runs every section at toy sizes on the CPU (the test suite
does this so the script cannot rot between GPU leases); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from richkd_deploy.evaluate.latency import describe_machine, machine_info  # noqa: E402

VARIANTS = {"eager": (False, False), "channels_last": (True, False), "compile": (False, True),
            "channels_last+compile": (True, True)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Wall seconds of `fn` per call, device work included."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- train


def make_train_step(fwd: Callable[..., Any], opt: torch.optim.Optimizer, scaler: Any, images: torch.Tensor,
                    labels: torch.Tensor, n_data: int, device: torch.device, amp: bool) -> Callable[[], None]:
    """One AMP training step as the trainer does it (random dataset indices for CRD)."""
    from richkd_deploy.train import devices

    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randperm(n_data, generator=gen)[: images.shape[0]].to(device)
        opt.zero_grad(set_to_none=True)
        with devices.autocast(device, amp):
            _, terms = fwd(images, labels, idx)
            loss = sum(terms.values())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def section_train(device: torch.device, quick: bool) -> dict[str, Any]:
    from distill_overhead import fake_cache

    from richkd_deploy.distill.distillers import create_distiller
    from richkd_deploy.models import create_model
    from richkd_deploy.recipe import DistillConfig
    from richkd_deploy.train import devices

    classes, n_data = (10, 512) if quick else (100, 50_000)
    teacher_arch, student_arch = ("resnet8", "resnet8") if quick else ("resnet32x4", "resnet8x4")
    batches = (8,) if quick else (64, 256)
    variants = {"eager": VARIANTS["eager"], "channels_last": VARIANTS["channels_last"]} if quick else VARIANTS
    warmup, reps = (1, 2) if quick else (5, 20)
    amp = devices.amp_enabled(device, True)
    out: dict[str, Any] = {"pair": f"{teacher_arch} -> {student_arch}", "amp": amp,
                           "amp_dtype": str(devices.amp_dtype()) if amp else None, "rows": []}
    torch.manual_seed(0)
    teacher = create_model(teacher_arch, num_classes=classes).eval()
    with tempfile.TemporaryDirectory() as tmp:
        clip = fake_cache(Path(tmp), n_data, classes, 768)
        for bs in batches:
            images = torch.randn(bs, 3, 32, 32, device=device)
            labels = torch.randint(0, classes, (bs,), device=device)
            kd_eager = None
            for method in ("kd", "richkd_lf"):
                for variant, (channels_last, compile_) in variants.items():
                    row = {"method": method, "batch": bs, "variant": variant}
                    try:
                        student = create_model(student_arch, num_classes=classes)
                        # a fresh teacher copy: channels_last converts the teacher in place too
                        d = create_distiller(method, DistillConfig(nce_k=min(16384, n_data - 1)), student,
                                             copy.deepcopy(teacher), clip, n_data, device,
                                             train_labels=torch.arange(n_data) % classes)
                        d.train()
                        if channels_last:
                            d = d.to(memory_format=torch.channels_last)
                        fwd = torch.compile(d) if compile_ else d
                        opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
                        scaler = devices.make_scaler(device, amp)
                        x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
                        step = make_train_step(fwd, opt, scaler, x, labels, n_data, device, amp)
                        t0 = time.perf_counter()
                        step()  # the first step pays for compilation; reported, not timed
                        sync(device)
                        row["first_step_s"] = round(time.perf_counter() - t0, 3)
                        times = timed(step, device, warmup, reps)
                        row["images_per_s"] = bs / statistics.median(times)
                        if method == "kd" and variant == "eager":
                            kd_eager = row["images_per_s"]
                        row["ratio_to_kd_eager"] = row["images_per_s"] / kd_eager if kd_eager else None
                    except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the rest
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                    out["rows"].append(row)
                    print(f"  train {method:9s} batch {bs:3d} {variant:22s} "
                          + (f"{row['images_per_s']:9.0f} img/s" if "images_per_s" in row else row.get("error", "")),
                          flush=True)
    return out


# --------------------------------------------------------------------------- clip


def matmul_tflops(device: torch.device, quick: bool) -> float:
    """Measured bf16 (CUDA) or fp32 (CPU) matrix-multiply rate, TFLOP/s."""
    n = 1024 if quick else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = timed(lambda: a @ b, device, 3, 3 if quick else 20)
    return 2 * n**3 / statistics.median(times) / 1e12


def image_tower_flops(model: torch.nn.Module, image_size: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, image_size, image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_image(x)
    return float(counter.get_total_flops())


def section_clip(device: torch.device, quick: bool) -> dict[str, Any]:
    from richkd_deploy.clip.cache import build_clip_cache, cache_fingerprint
    from richkd_deploy.clip.encode import clip_autocast
    from richkd_deploy.clip.loader import load_clip
    from richkd_deploy.clip.prompts import ZeroShotHead, build_class_embeddings

    arch = "tiny-ViT" if quick else "ViT-L-14"
    n_images, batch, workers = (32, 16, 0) if quick else (4096, 256, 12)
    loaded = load_clip(arch, "none", allow_random=True, device=device)
    out: dict[str, Any] = {"model": arch, "weights": loaded.weights_id, "image_size": loaded.image_size,
                           "images": n_images, "batch": batch, "num_workers": workers}
    out["matmul_tflops"] = matmul_tflops(device, quick)
    out["flops_per_image"] = image_tower_flops(loaded.model, loaded.image_size, device)
    roofline = out["matmul_tflops"] * 1e12 / out["flops_per_image"]
    out["roofline_images_per_s"] = roofline

    # the bare image tower, inputs already on the device: what the GPU itself sustains
    x = torch.randn(batch, 3, loaded.image_size, loaded.image_size, device=device)

    def encode() -> None:
        with torch.no_grad(), clip_autocast(device):
            loaded.model.encode_image(x)

    times = timed(encode, device, 2, 3 if quick else 10)
    out["tower_images_per_s"] = batch / statistics.median(times)
    out["tower_fraction_of_roofline"] = out["tower_images_per_s"] / roofline

    # the real pipeline: uint8 images -> PIL -> open_clip preprocess in workers -> device
    class Images:
        classes = [f"class_{i}" for i in range(10)]

        def __init__(self) -> None:
            self.images = np.random.default_rng(0).integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
            self.labels = np.arange(n_images) % 10

        def __len__(self) -> int:
            return n_images

        def raw(self, i: int) -> Any:
            from PIL import Image

            return Image.fromarray(self.images[i])

    ds = Images()
    emb = build_class_embeddings(loaded.model, loaded.tokenizer, ds.classes, ["a photo of a {}."], device=device)
    head = ZeroShotHead(emb, 100.0).to(device)
    fp = cache_fingerprint(loaded, ["a photo of a {}."], "spaces", 100.0, "gpu-check", ds)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_clip_cache(loaded, head, ds, Path(tmp), fp, device, batch, workers, quiet=True)
        sync(device)
        elapsed = time.perf_counter() - t0
    out["cache_images_per_s"] = n_images / elapsed
    out["cache_fraction_of_roofline"] = out["cache_images_per_s"] / roofline
    print(f"  clip {arch}: tower {out['tower_images_per_s']:.0f} img/s, cache build "
          f"{out['cache_images_per_s']:.0f} img/s, roofline {roofline:.0f} img/s "
          f"({out['matmul_tflops']:.3g} TFLOP/s, {out['flops_per_image'] / 1e9:.3g} GFLOP/img)", flush=True)
    return out


# --------------------------------------------------------------------------- onnxruntime CUDA


def _student_onnx(folder: Path, quick: bool) -> tuple[torch.nn.Module, Path]:
    from exporters.onnx_fp32 import export_onnx
    from richkd_deploy import models

    torch.manual_seed(0)
    arch = "resnet8" if quick else "resnet8x4"
    view = models.export_view(models.create_model(arch, num_classes=100)).eval()
    return view, export_onnx(view, folder / "model.onnx", (3, 32, 32), 17, {"arch": arch})


def section_ort(device: torch.device, quick: bool) -> dict[str, Any]:
    import onnxruntime as ort

    from richkd_deploy.evaluate.latency import bench_callables
    from richkd_deploy.runtime.onnxruntime import make_session, run_session

    available = ort.get_available_providers()
    out: dict[str, Any] = {"onnxruntime": ort.__version__, "available_providers": available}
    provider = "cuda" if device.type == "cuda" else "cpu"
    if provider == "cuda" and "CUDAExecutionProvider" not in available:
        out["skipped"] = "this onnxruntime has no CUDAExecutionProvider (pip install 'richkd-deploy[gpu]')"
        return out
    batches = (1, 8) if quick else (1, 256)
    with tempfile.TemporaryDirectory() as tmp:
        view, path = _student_onnx(Path(tmp), quick)
        session = make_session(path, provider)
        out["provider"] = session.get_providers()[0]
        x = np.random.default_rng(0).standard_normal((batches[-1], 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            ref = view(torch.from_numpy(x)).numpy()
        got = np.asarray(run_session(session, x))
        out["parity_max_abs_diff"] = float(np.abs(got - ref).max())
        out["parity_top1_agreement"] = float((got.argmax(1) == ref.argmax(1)).mean())
        view_dev = view.to(device)

        def torch_fn(a: np.ndarray) -> Any:
            with torch.no_grad():
                y = view_dev(torch.from_numpy(a).to(device))
            sync(device)
            return y

        results = bench_callables({"torch-eager": torch_fn, f"onnxruntime-{provider}": lambda a: run_session(session, a)},
                                  (3, 32, 32), batches, warmup=3 if quick else 20, iters=5 if quick else 200,
                                  budget_s=0.5 if quick else 3.0, min_iters=3)
    out["latency"] = {str(bs): {n: s.to_dict() for n, s in r.items()} for bs, r in results.items()}
    print(f"  ort {out['provider']}: max |diff| {out['parity_max_abs_diff']:.2e}, "
          + ", ".join(f"batch {bs}: p50 {r[f'onnxruntime-{provider}'].p50_ms:.3f} ms vs torch {r['torch-eager'].p50_ms:.3f} ms"
                      for bs, r in results.items()), flush=True)
    return out


# --------------------------------------------------------------------------- TensorRT


def section_trt(device: torch.device, quick: bool) -> dict[str, Any]:
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken CUDA install
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {"importable": True, "version": trt.__version__, "engines": {}}
    from exporters.int8 import quantize_int8
    from exporters.tensorrt_build import build_engine
    from richkd_deploy.runtime.engine_sidecar import ShapeProfile
    from richkd_deploy.runtime.tensorrt import load_engine

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        view, fp32 = _student_onnx(folder, quick)
        rng = np.random.default_rng(0)
        calib = [rng.standard_normal((64, 3, 32, 32)).astype(np.float32) for _ in range(4)]
        int8 = quantize_int8(fp32, calib, folder / "model.int8.onnx")
        profile = ShapeProfile("input", (1, 3, 32, 32), (64, 3, 32, 32), (256, 3, 32, 32))
        x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            ref = view(torch.from_numpy(x)).numpy()
        for precision, source in (("fp16", fp32), ("int8", int8)):
            entry: dict[str, Any] = {}
            try:
                t0 = time.perf_counter()
                engine_path, _ = build_engine(source, precision, profile, folder / f"model.{precision}.engine",
                                              timing_cache=folder / "timing.cache")
                entry["build_s"] = round(time.perf_counter() - t0, 2)
                runner = load_engine(engine_path)
                got = runner.infer(torch.from_numpy(x)).float().cpu().numpy()
                entry["max_abs_diff_vs_torch"] = float(np.abs(got - ref).max())
                entry["top1_agreement_vs_torch"] = float((got.argmax(1) == ref.argmax(1)).mean())
            except Exception as exc:  # noqa: BLE001
                entry["error"] = f"{type(exc).__name__}: {exc}"
            out["engines"][precision] = entry
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "trt", "tests"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    out["pytest_trt"] = {"returncode": tests.returncode, "tail": tests.stdout.strip().splitlines()[-3:]}
    return out


# --------------------------------------------------------------------------- main

# --------------------------------------------------------------------------- DDP stages (issue 18)


def section_clip_ddp(device: torch.device, quick: bool) -> dict[str, Any]:
    """The CLIP cache built by 1 process vs 2 torchrun ranks (shards, gloo between them; on a
    one-GPU lease both ranks share the GPU and split the CPU-bound PIL preprocessing)."""
    import scaleout

    return scaleout.clip_scaling(device.type, quick, [1, 2])


def section_validate_ddp(device: torch.device, quick: bool) -> dict[str, Any]:
    """`validate --nproc 1` vs `--nproc 2` (onnxruntime CPU provider, gloo) on an exported run."""
    import scaleout

    return scaleout.validate_scaling(device.type, quick, [1, 2])


SECTIONS = {"train": section_train, "clip": section_clip, "clip_ddp": section_clip_ddp,
            "validate_ddp": section_validate_ddp, "ort": section_ort, "trt": section_trt}


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"gpu_check on {report['device_name']} ({report['device']})"]
    s = report["sections"]
    for row in s.get("train", {}).get("rows", []):
        if "images_per_s" in row:
            lines.append(f"train  {row['method']:9s} b{row['batch']:<3d} {row['variant']:22s} "
                         f"{row['images_per_s']:9.0f} img/s  {row['ratio_to_kd_eager']:.2f}x KD eager")
        else:
            lines.append(f"train  {row['method']:9s} b{row['batch']:<3d} {row['variant']:22s} {row.get('error')}")
    c = s.get("clip", {})
    if "cache_images_per_s" in c:
        lines.append(f"clip   {c['model']} cache {c['cache_images_per_s']:.0f} img/s "
                     f"({100 * c['cache_fraction_of_roofline']:.0f}% of roofline), tower "
                     f"{c['tower_images_per_s']:.0f} img/s ({100 * c['tower_fraction_of_roofline']:.0f}%)")
    for name in ("clip_ddp", "validate_ddp"):
        if "runs" in s.get(name, {}):
            import scaleout

            lines.append(scaleout.summary(name.split("_")[0] + "/ddp", s[name]))
    o = s.get("ort", {})
    if "latency" in o:
        lines.append(f"ort    {o['provider']} max|diff| {o['parity_max_abs_diff']:.1e}; " + "; ".join(
            f"b{bs} p50 {min(v['p50_ms'] for k, v in r.items() if k.startswith('onnxruntime')):.3f} ms"
            for bs, r in o["latency"].items()))
    elif o.get("skipped"):
        lines.append(f"ort    skipped: {o['skipped']}")
    t = s.get("trt", {})
    lines.append("trt    " + (f"tensorrt {t.get('version')}: " + ", ".join(
        f"{p} {e.get('error') or format(e['top1_agreement_vs_torch'], '.3f') + ' agreement'}" for p, e in t.get("engines", {}).items())
        if t.get("importable") else f"not importable ({t.get('error', '?')})"))
    for name, sec in s.items():
        if "section_error" in sec:
            lines.append(f"{name:6s} FAILED: {sec['section_error']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder for gpu_check.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="toy sizes (a CPU self-test of this script)")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; pass --device cpu --quick for a self-test", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {"device": str(device), "device_name": name, "quick": args.quick,
                              "machine": machine_info(), "torch": torch.__version__,
                              "cuda": torch.version.cuda, "sections": {}}
    print(describe_machine(report["machine"]), f"| device {name}", flush=True)
    for section in args.sections:
        t0 = time.perf_counter()
        try:
            report["sections"][section] = SECTIONS[section](device, args.quick)
        except Exception as exc:  # noqa: BLE001 - record it and go on to the next section
            traceback.print_exc()
            report["sections"][section] = {"section_error": f"{type(exc).__name__}: {exc}"}
        report["sections"][section]["seconds"] = round(time.perf_counter() - t0, 2)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print("\n".join(["", *summary_lines(report)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
