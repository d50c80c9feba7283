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

    python benchmarks/corruptions.py --size 224 --n 200 --ref-n 2 --strength-n 24

`--strength-n K` compares the strengths on the first K images instead (the
reference runs untimed on the extra ones): a random corruption's strength on two
images is mostly the luck of its draws (frost's texture, fog's fractal).

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
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corruption_helpers import (  # noqa: E402
    FASHION_DIR,
    fidelity_table,
    load_images,
    load_predict,
    print_fidelity,
    reference_corrupt,
    reference_module,
)

from richkd_deploy.evaluate.corruptions import CORRUPTIONS, SEVERITIES, corrupt, frost_source  # noqa: E402
from richkd_deploy.evaluate.latency import describe_machine, machine_info  # noqa: E402

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
    strength_n: int | None = None,
) -> dict[str, Any]:
    """Per-cell wall and CPU seconds for the reference (if installed) and for ours.

    `cold`: our first call per cell is the timed one (validate's situation), and the
    strength (mean |corrupted - clean|) of both is recorded. `ref_n`: the reference
    is timed on the first `ref_n` images and scaled to all of them (it is per image).
    `strength_n`: the strengths are compared on the first `strength_n` images (at
    least `ref_n`; the reference runs untimed on the extra ones), because a random
    corruption's strength on two images is mostly the luck of the draw."""
    ref = reference_module() if ref_severities is not None else None
    np.random.seed(seed)  # the reference draws from numpy's global generator
    cells = []
    warm = images[:4]
    k = min(ref_n or len(images), len(images))
    ks = min(max(strength_n or k, k), len(images))
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
                    if ks > k:
                        theirs = torch.cat([theirs, reference_corrupt(ref, images[k:ks], name, severity)])
                    cell["strength_ours"] = _strength(out[:ks], images[:ks])
                    cell["strength_ref"] = _strength(theirs, images[:ks])
            cells.append(cell)
            print(f"  {name:18s} s{severity}  " + _cell_text(cell), flush=True)
    return {"cells": cells, "reference_installed": ref is not None, "ref_images_timed": k if ref else None,
            "strength_images": ks if ref and cold else None}


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


def print_strength(cells: Sequence[dict[str, Any]], images: int | None = None) -> None:
    """Per corruption: the speed ratio and strength ratio (ours / reference) per severity."""
    on = f", strength on {images} images" if images else ""
    print(f"\nper cell, by severity: speed ratio ref/ours | strength ratio ours/ref (mean |pixel change|){on}")
    for name in dict.fromkeys(c["name"] for c in cells):
        row = [c for c in cells if c["name"] == name and "strength_ref" in c]
        print(f"  {name:18s} " + " ".join(f"{c['ref_wall'] / c['ours_wall']:6.1f}x|{c['strength_ours'] / max(c['strength_ref'], 1e-9):4.2f}"
                                         for c in row))


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
    p.add_argument("--strength-n", type=int, default=None, help="edge mode: compare strengths on the first K "
                   "images (default: the --ref-n timed ones; the reference runs untimed on the rest)")
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
                            ref_n=args.ref_n, device=args.device, strength_n=args.strength_n)
        if not result["reference_installed"] and ref_sev is not None:
            print("reference implementation (imagecorruptions) not installed: timing ours only")
            ref_sev = None
        summary = summarise_speed(result, names, args.severities, ref_sev)
        print_speed(summary, len(images))
        if cold and result["reference_installed"]:
            print_strength(result["cells"], result["strength_images"])
        report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        report.update({"images": source, "n": len(images), "repeat": args.repeat, "speed": {**result, **summary}})
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print("wrote", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
