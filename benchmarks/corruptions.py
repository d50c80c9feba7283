"""Speed and fidelity of our batched corruptions against the reference.

Speed (default): times the reference implementation (``imagecorruptions``,
one image at a time, as it is used) and ours (one batched call per cell) on
the same N Fashion-MNIST test images, padded to 32x32 and repeated to RGB,
cell by cell (corruption x severity) so that any load on the machine hits
both alike. One warm-up call per cell on a few images is excluded for both
(numba compilation, texture loading, our operator and table caches).

    python benchmarks/corruptions.py --n 1000
    python benchmarks/corruptions.py --n 1000 --ref-severities 3   # reference at 3 only, x5, labelled

Edge resolution (`--size 224`): the 15x5 suite as validate runs it, each cell
generated once on N images upsampled to SIZE x SIZE (Fashion-MNIST, bilinear), our
first call per cell INCLUDED (operator and table builds, as validate pays them);
the reference is warmed per cell (its numba compilation and texture loads
excluded: the comparison is conservative for us). The reference runs image by
image, so `--ref-n K` times it on the first K of the N images and scales by N/K
(labelled); the strength per cell is the mean absolute pixel change from the clean
image under ours and under the reference on those same K images, and their ratio.

    python benchmarks/corruptions.py --size 224 --n 200 --ref-n 20

Fidelity: accuracy of a classifier on the same 2,000 test images under our
corruption and under the reference's, per corruption and severity, with the
mean absolute difference over the cells, the largest cell, and a noise floor
(our own accuracy under two different seeds).

    python benchmarks/corruptions.py --fidelity --model model.onnx --mean 72.94 --std 90.02
    python benchmarks/corruptions.py --fidelity --model mypkg.mymodule:predict

`--model` is an ONNX file (run with onnxruntime on the CPU; its input is
``(uint8 image - mean) / std`` as float32 NCHW) or ``module:attribute`` naming
a callable ``predict(uint8 NCHW tensor) -> logits [N, K]``. `--json OUT`
writes every number.

OpenMP threads wait passively here (OMP_WAIT_POLICY=PASSIVE unless already
set): on a shared 2-core machine a spinning thread otherwise burns the core its
partner needs, which doubled our wall times under load. `--repeat R` keeps the
fastest of R runs per cell, for both implementations alike.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy/torch start their OpenMP runtimes

import argparse  # noqa: E402
import gzip  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from richkd_deploy.evaluate.corruptions import CORRUPTIONS, SEVERITIES, corrupt, frost_source  # noqa: E402
from richkd_deploy.evaluate.latency import describe_machine, machine_info  # noqa: E402

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
Predict = Callable[[torch.Tensor], Any]


# --------------------------------------------------------------------- data


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz)."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rb") as f:
                raw = f.read()
            ndim = raw[3]
            dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    raise FileNotFoundError(path)


def load_images(n: int, data_dir: Path = FASHION_DIR, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first n Fashion-MNIST test images as uint8 [n, 3, size, size] (zero-padded to
    32, grey repeated to RGB, upsampled bilinearly when size > 32) with labels; random
    images and -1 labels when the files are missing."""
    if size != 32:
        from richkd_deploy.data.transforms import resize_uint8

        x, y, source = load_images(n, data_dir)
        return resize_uint8(x, size).contiguous(), y, f"{source}, upsampled to {size}x{size}"
    try:
        images = _read_idx(data_dir / "t10k-images-idx3-ubyte")[:n]
        labels = _read_idx(data_dir / "t10k-labels-idx1-ubyte")[:n]
    except FileNotFoundError:
        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8), torch.full((n,), -1), "random"
    x = torch.from_numpy(np.pad(images, ((0, 0), (2, 2), (2, 2))).copy())
    return x[:, None].repeat(1, 3, 1, 1), torch.from_numpy(labels.astype(np.int64)), f"fashion-mnist test ({data_dir})"


# ---------------------------------------------------------------- reference


def reference_module() -> Any | None:
    try:
        return importlib.import_module("imagecorruptions")
    except ImportError:
        return None


def reference_corrupt(ref: Any, images: torch.Tensor, name: str, severity: int) -> torch.Tensor:
    """The reference applied image by image (HWC numpy), back to a uint8 NCHW tensor."""
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.stack([ref.corrupt(im, corruption_name=name, severity=severity) for im in hwc])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# -------------------------------------------------------------------- speed


def _timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, float]:
    """Fastest wall time of `repeat` runs, with that run's CPU time."""
    best = (float("inf"), float("inf"))
    for _ in range(max(1, repeat)):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def time_suite(
    images: torch.Tensor,
    names: Sequence[str],
    severities: Sequence[int],
    ref_severities: Sequence[int] | None,
    seed: int = 0,
    repeat: int = 1,
    cold: bool = False,
    ref_n: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Per-cell wall and CPU seconds for the reference (if installed) and for ours.

    `cold`: our first call per cell is the timed one (validate's situation), and the
    strength (mean |corrupted - clean|) of both is recorded. `ref_n`: the reference
    is timed on the first `ref_n` images and scaled to all of them (it is per image)."""
    ref = reference_module() if ref_severities is not None else None
    cells = []
    warm = images[:4]
    k = min(ref_n or len(images), len(images))
    ref_images, scale = images[:k], len(images) / k
    dev_images = images.to(device)

    def ours(name: str, severity: int) -> torch.Tensor:
        out = corrupt(dev_images, name, severity, seed)
        if dev_images.is_cuda:
            torch.cuda.synchronize()
        return out.cpu()
    for name in names:
        for severity in severities:
            if not cold:
                corrupt(warm.to(device), name, severity, seed)
            cell: dict[str, Any] = {"name": name, "severity": severity}
            if cold:
                cell["ours_wall"], cell["ours_cpu"], out = _timed_out(partial(ours, name, severity))
            else:
                cell["ours_wall"], cell["ours_cpu"] = _timed(partial(ours, name, severity), repeat)
            if ref is not None and severity in ref_severities:
                reference_corrupt(ref, warm[:1], name, severity)
                wall, cpu, theirs = _timed_out(partial(reference_corrupt, ref, ref_images, name, severity))
                cell["ref_wall"], cell["ref_cpu"] = wall * scale, cpu * scale
                if cold:
                    cell["strength_ours"] = _strength(out[:k], ref_images)
                    cell["strength_ref"] = _strength(theirs, ref_images)
            cells.append(cell)
            print(f"  {name:18s} s{severity}  " + _cell_text(cell), flush=True)
    return {"cells": cells, "reference_installed": ref is not None, "ref_images_timed": k if ref else None}


def _timed_out(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _strength(corrupted: torch.Tensor, clean: torch.Tensor) -> float:
    """Mean absolute pixel change (0..255) a corruption makes."""
    return float((corrupted.to(torch.float32) - clean.to(torch.float32)).abs().mean())


def _cell_text(cell: dict[str, Any]) -> str:
    ref = f"ref {cell['ref_wall']:7.3f}s" if "ref_wall" in cell else "ref      -  "
    text = f"{ref}  ours {cell['ours_wall']:7.3f}s"
    if "ref_wall" in cell:
        text += f"  ratio {cell['ref_wall'] / cell['ours_wall']:6.1f}x"
    if "strength_ours" in cell:
        text += (f"  strength ours {cell['strength_ours']:6.2f} ref {cell['strength_ref']:6.2f} "
                 f"({cell['strength_ours'] / max(cell['strength_ref'], 1e-9):.2f})")
    return text


def summarise_speed(result: dict[str, Any], names: Sequence[str], severities: Sequence[int], ref_severities: Sequence[int] | None) -> dict[str, Any]:
    """Per-corruption totals and the overall ratio; extrapolates the reference only when asked."""
    cells = result["cells"]
    extrapolate = ref_severities is not None and set(ref_severities) != set(severities)
    scale = len(severities) / len(ref_severities) if extrapolate else 1.0
    per: dict[str, dict[str, float]] = {}
    for name in names:
        mine = [c for c in cells if c["name"] == name]
        entry = {"ours_wall": sum(c["ours_wall"] for c in mine), "ours_cpu": sum(c["ours_cpu"] for c in mine)}
        timed = [c for c in mine if "ref_wall" in c]
        if timed:
            entry["ref_wall"] = sum(c["ref_wall"] for c in timed) * scale
            entry["ref_cpu"] = sum(c["ref_cpu"] for c in timed) * scale
        per[name] = entry
    out: dict[str, Any] = {
        "per_corruption": per,
        "ours_wall": sum(v["ours_wall"] for v in per.values()),
        "ours_cpu": sum(v["ours_cpu"] for v in per.values()),
        "reference_extrapolated_from_severities": list(ref_severities) if extrapolate else None,
    }
    if all("ref_wall" in v for v in per.values()) and per:
        out["ref_wall"] = sum(v["ref_wall"] for v in per.values())
        out["ref_cpu"] = sum(v["ref_cpu"] for v in per.values())
        out["speedup_wall"] = out["ref_wall"] / out["ours_wall"]
        out["speedup_cpu"] = out["ref_cpu"] / out["ours_cpu"]
    return out


def print_speed(summary: dict[str, Any], n: int) -> None:
    extra = summary["reference_extrapolated_from_severities"]
    label = f"ref (EXTRAPOLATED x{len(SEVERITIES)}/{len(extra)} from severities {extra})" if extra else "ref"
    print(f"\nper corruption, all severities, {n} images (wall seconds):")
    print(f"  {'corruption':18s} {label:>12s} {'ours':>9s} {'ratio':>8s}")
    for name, v in summary["per_corruption"].items():
        ref = v.get("ref_wall")
        ratio = f"{ref / v['ours_wall']:8.1f}" if ref else "       -"
        ref_text = f"{ref:12.3f}" if ref else "           -"
        print(f"  {name:18s} {ref_text} {v['ours_wall']:9.3f} {ratio}")
    print(f"  {'TOTAL':18s} {summary.get('ref_wall', float('nan')):12.3f} {summary['ours_wall']:9.3f}", end="")
    if "speedup_wall" in summary:
        print(f" {summary['speedup_wall']:8.1f}x wall, {summary['speedup_cpu']:.1f}x CPU time" + (" (reference extrapolated)" if extra else ""))
    else:
        print("   (reference not timed)")


def print_strength(cells: Sequence[dict[str, Any]]) -> None:
    """Per corruption: the speed ratio and strength ratio (ours / reference) per severity."""
    print("\nper cell: speed ratio ref/ours | strength ratio ours/ref (mean |pixel change|)")
    for name in dict.fromkeys(c["name"] for c in cells):
        row = [c for c in cells if c["name"] == name and "strength_ref" in c]
        print(f"  {name:18s} " + " ".join(f"{c['ref_wall'] / c['ours_wall']:6.1f}x|{c['strength_ours'] / max(c['strength_ref'], 1e-9):4.2f}"
                                         for c in row))


# ----------------------------------------------------------------- fidelity


def onnx_predict(path: str | Path, mean: Sequence[float], std: Sequence[float], batch: int = 500) -> Predict:
    """predict(uint8 NCHW) -> numpy logits with an onnxruntime CPU session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)

    def predict(images: torch.Tensor) -> np.ndarray:
        x = images.cpu().numpy().astype(np.float32)
        outs = [session.run(None, {input_name: (x[i : i + batch] - m) / s})[0] for i in range(0, len(x), batch)]
        return np.concatenate(outs)

    return predict


def load_predict(spec: str, mean: Sequence[float], std: Sequence[float]) -> Predict:
    """An ONNX path, or 'module:attribute' naming a predict callable."""
    if spec.endswith(".onnx") or Path(spec).is_file():
        return onnx_predict(spec, mean, std)
    module, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--model must be an .onnx file or module:attribute, got {spec!r}")
    return getattr(importlib.import_module(module), attr)


def accuracy(predict: Predict, images: torch.Tensor, labels: torch.Tensor) -> float:
    logits = predict(images)
    logits = logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
    return float(np.mean(logits.argmax(axis=1) == labels.numpy()))


def fidelity_table(
    predict: Predict,
    images: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    severities: Sequence[int],
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy (in %) under ours, under the reference, and under ours with another seed."""
    ref = reference_module()
    if ref is None:
        raise SystemExit("fidelity needs the reference implementation: pip install imagecorruptions-imaug")
    np.random.seed(seed)
    cells = []
    for name in names:
        for severity in severities:
            ours = 100 * accuracy(predict, corrupt(images, name, severity, seed), labels)
            again = 100 * accuracy(predict, corrupt(images, name, severity, seed + 1), labels)
            theirs = 100 * accuracy(predict, reference_corrupt(ref, images, name, severity), labels)
            cells.append({"name": name, "severity": severity, "ours": ours, "reference": theirs, "ours_other_seed": again, "diff": ours - theirs})
            print(f"  {name:18s} s{severity}  ours {ours:6.2f}  ref {theirs:6.2f}  diff {ours - theirs:+6.2f}  (seed+1 {again:6.2f})", flush=True)
    diffs = np.array([abs(c["diff"]) for c in cells])
    floor = np.array([abs(c["ours"] - c["ours_other_seed"]) for c in cells])
    worst = max(cells, key=lambda c: abs(c["diff"]))
    per = {name: float(np.mean([abs(c["diff"]) for c in cells if c["name"] == name])) for name in names}
    return {
        "clean_accuracy": 100 * accuracy(predict, images, labels),
        "cells": cells,
        "mean_abs_diff": float(diffs.mean()),
        "max_abs_diff": float(diffs.max()),
        "max_cell": {"name": worst["name"], "severity": worst["severity"], "diff": worst["diff"]},
        "per_corruption_mean_abs_diff": per,
        "seed_to_seed_mean_abs_diff": float(floor.mean()),
        "seed_to_seed_max_abs_diff": float(floor.max()),
    }


def print_fidelity(table: dict[str, Any], severities: Sequence[int]) -> None:
    print(f"\naccuracy (%) ours / reference, clean {table['clean_accuracy']:.2f}")
    print(f"  {'corruption':18s} " + " ".join(f"{'s' + str(s):>13s}" for s in severities) + "   mean|d|")
    for name, mean_diff in table["per_corruption_mean_abs_diff"].items():
        row = [c for c in table["cells"] if c["name"] == name]
        print(f"  {name:18s} " + " ".join(f"{c['ours']:6.2f}/{c['reference']:6.2f}" for c in row) + f"   {mean_diff:6.2f}")
    worst = table["max_cell"]
    print(
        f"\nmean |ours - ref| over {len(table['cells'])} cells: {table['mean_abs_diff']:.2f} points; "
        f"max {table['max_abs_diff']:.2f} ({worst['name']} s{worst['severity']}, {worst['diff']:+.2f}); "
        f"seed-to-seed noise floor: mean {table['seed_to_seed_mean_abs_diff']:.2f}, max {table['seed_to_seed_max_abs_diff']:.2f}"
    )


# --------------------------------------------------------------------- main


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="images for the speed test (default 1000)")
    p.add_argument("--size", type=int, default=32, help="image side; 224: edge mode, first calls timed, strength "
                   "per cell (default 32)")
    p.add_argument("--ref-n", type=int, default=None, help="time the reference on the first K images and scale "
                   "to --n (labelled; it runs image by image)")
    p.add_argument("--device", default="cpu", help="run ours on this torch device (e.g. cuda)")
    p.add_argument("--names", default=",".join(CORRUPTIONS), help="comma-separated corruptions (default: the 15)")
    p.add_argument("--severities", type=_ints, default=list(SEVERITIES), help="default 1,2,3,4,5")
    p.add_argument("--ref-severities", type=_ints, default=None, help="time the reference only at these severities and extrapolate (labelled)")
    p.add_argument("--no-reference", action="store_true", help="time ours only")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell, fastest kept, for both (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=FASHION_DIR)
    p.add_argument("--fidelity", action="store_true", help="accuracy table ours vs reference instead of timing")
    p.add_argument("--model", help="ONNX file or module:attribute predict callable (for --fidelity)")
    p.add_argument("--mean", type=_floats, default=[0.0], help="ONNX input mean, scalar or per channel, in 0..255 units")
    p.add_argument("--std", type=_floats, default=[255.0], help="ONNX input std, scalar or per channel, in 0..255 units")
    p.add_argument("--fidelity-n", type=int, default=2000, help="images for the fidelity table (default 2000)")
    p.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.names.split(",") if n]
    report: dict[str, Any] = {"machine": machine_info(), "frost_source": frost_source(), "seed": args.seed}
    print(describe_machine(report["machine"]), "| frost textures:", report["frost_source"])
    if args.fidelity:
        if not args.model:
            raise SystemExit("--fidelity needs --model")
        images, labels, source = load_images(args.fidelity_n, args.data_dir)
        if source == "random":
            raise SystemExit("fidelity needs the Fashion-MNIST test set (labels); not found in " + str(args.data_dir))
        print(f"fidelity on {len(images)} images from {source}")
        table = fidelity_table(load_predict(args.model, args.mean, args.std), images, labels, names, args.severities, args.seed)
        print_fidelity(table, args.severities)
        report.update({"images": source, "n": len(images), "fidelity": table})
    else:
        images, _, source = load_images(args.n, args.data_dir, args.size)
        ref_sev = None if args.no_reference else (args.ref_severities or args.severities)
        cold = args.size != 32
        print(f"timing on {len(images)} images from {source}; reference image by image"
              + (f" on the first {min(args.ref_n, len(images))} (scaled x{len(images) / min(args.ref_n, len(images)):.1f})"
                 if args.ref_n else "") + ", ours batched" + (", first call per cell included" if cold else ""))
        result = time_suite(images, names, args.severities, ref_sev, args.seed, args.repeat, cold=cold,
                            ref_n=args.ref_n, device=args.device)
        if not result["reference_installed"] and ref_sev is not None:
            print("reference implementation (imagecorruptions) not installed: timing ours only")
            ref_sev = None
        summary = summarise_speed(result, names, args.severities, ref_sev)
        print_speed(summary, len(images))
        if cold and result["reference_installed"]:
            print_strength(result["cells"])
        report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        report.update({"images": source, "n": len(images), "repeat": args.repeat, "speed": {**result, **summary}})
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print("wrote", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
