"""Helpers of benchmarks/corruptions.py: the Fashion-MNIST images, the reference
implementation applied image by image, and the accuracy-fidelity table (ours vs
the reference under a classifier). Split out to keep the benchmark script short.
"""

from __future__ import annotations

import gzip
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from richkd_deploy.evaluate.corruptions import corrupt

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
