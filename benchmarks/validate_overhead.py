"""Validate's wall time against the pure inference time of the models it runs.

Builds a run from a generated image folder (3 classes, `--test` images of
(SIZE+16)x(SIZE+32) JPEGs) by adopting a random-init torchvision model
(`export --weights`), exports it (ONNX fp32, fp16, int8), then in one process:

1. `validate_run` on it (wall, CPU user/sys, minor page faults);
2. pure inference: every row validate evaluated (the torch student and each
   artifact), run over the same number of images (clean + one batch per corruption
   cell) from one preallocated array, fresh runtimes, nothing else.

The ratio (1) / (2) is validate's overhead: image decoding, corruption generation,
normalisation copies, metrics, reports.

    python benchmarks/validate_overhead.py --size 128 --test 400 --names gaussian_noise,defocus_blur,contrast
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from exporters.pipeline import export_run  # noqa: E402
from richkd_deploy.adopt import adopt_checkpoint  # noqa: E402
from richkd_deploy.evaluate.harness import validate_run  # noqa: E402
from richkd_deploy.evaluate.latency import describe_machine  # noqa: E402
from richkd_deploy.runtime import TorchRuntime, create_runtime, predict_all  # noqa: E402


def make_folder(root: Path, size: int, n_test: int, per_class_train: int = 8) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class_train * 3), ("test", n_test)):
        for k in range(n):
            c = k % 3
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 60, (size + 16, size + 32, 3), dtype=np.uint8)
            arr[..., c] += 150
            arr[10 * c:10 * c + size // 4, 20:20 + size // 4] = 255
            Image.fromarray(arr).save(d / f"{k}.jpg", quality=90)


def _usage() -> tuple[float, float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


def _delta(a: tuple, b: tuple) -> str:
    return f"wall {b[0] - a[0]:7.1f}s  user {b[1] - a[1]:6.1f}s  sys {b[2] - a[2]:5.1f}s  minor faults {b[3] - a[3]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--arch", default="torchvision/resnet18")
    p.add_argument("--names", default="gaussian_noise,defocus_blur,contrast", help="corruptions ('' = all 15)")
    p.add_argument("--severities", default="1,2,3,4,5")
    p.add_argument("--unchunked", action="store_true",
                   help="run the torch student on whole batches (the behaviour before TorchRuntime.CPU_CHUNK_PIXELS)")
    p.add_argument("--workdir", type=Path, help="keep the folder and run here (default: a temp folder)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="validate_overhead_"))
    data, run = work / "images", work / "run"
    if not data.exists():
        make_folder(data, args.size, args.test)
    import torchvision

    weights = work / "weights.pth"
    torch.save(getattr(torchvision.models, args.arch.split("/", 1)[1])(num_classes=3).state_dict(), weights)
    names = [n for n in args.names.split(",") if n]
    overrides = [f"validate.corruptions.severities=[{args.severities}]", f"validate.corruptions.samples={args.test}"]
    if names:
        overrides.append(f"validate.corruptions.names=[{','.join(names)}]")
    quiet = lambda m: None  # noqa: E731
    adopt_checkpoint(str(weights), args.arch, str(data), str(run), input_size=args.size, force=True,
                     overrides=overrides, log=quiet)
    export_run(run, force=True, quiet=True, log=quiet)
    if args.unchunked:
        TorchRuntime.CPU_CHUNK_PIXELS = 1 << 40
    print(describe_machine(), "| torch chunk:", "whole batch" if args.unchunked else TorchRuntime.CPU_CHUNK_PIXELS)
    t0 = _usage()
    res = validate_run(run, quiet=True, log=quiet)
    t1 = _usage()
    cells = len(res["dataset"]["corruptions"]) * len(res["dataset"]["severities"])
    n, nc = res["dataset"]["test_samples"], res["dataset"]["corruption_samples"]
    print(f"validate at {args.size} px, {n} test images, {cells} corruption cells of {nc} images, "
          f"{len(res['rows'])} rows: {_delta(t0, t1)}")
    for row in res["rows"]:
        print(f"  row {row['name']:18s} predict {row['seconds']:7.1f}s")
    total_images = n + cells * nc
    x = np.random.default_rng(0).standard_normal((min(total_images, 512), 3, args.size, args.size)).astype(np.float32)
    pure = 0.0
    t2 = _usage()
    for row in res["rows"]:
        rt = TorchRuntime(Path(row["file"])) if row["backend"] == "torch" else create_runtime(Path(row["file"]))
        left, spent = total_images, 0.0
        predict_all(rt, x[:8], 256)  # session warm-up, as validate's first batch pays it too
        while left > 0:
            k = min(left, len(x))
            t = time.perf_counter()
            predict_all(rt, x[:k], 256)
            spent += time.perf_counter() - t
            left -= k
        pure += spent
        print(f"  pure {row['name']:18s} {spent:7.1f}s for {total_images} images")
    t3 = _usage()
    print(f"pure inference: {_delta(t2, t3)}")
    wall = t1[0] - t0[0]
    print(f"validate {wall:.1f}s / pure inference {pure:.1f}s = {wall / pure:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
