"""Peak memory of the image-folder pipeline: files are streamed from disk, not held in RAM.

Generates a folder of N small JPEGs (default 20,000 of 64x48, 10 classes), then
runs one training epoch of our loader (random resized crop to --size, flip,
normalise, decoded in --workers DataLoader workers) and, in the same run, the
same epoch through torchvision's ImageFolder + RandomResizedCrop as the baseline.
Each pipeline runs in a fresh subprocess so its peak RSS is its own; the
numbers are the peak RSS of the main process and of the largest worker
(getrusage), next to what the decoded images would take if held in memory.

    python benchmarks/imagefolder_rss.py --n 20000 --size 224 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_folder(root: Path, n: int, classes: int = 10, size: tuple[int, int] = (64, 48)) -> int:
    from PIL import Image

    rng = np.random.default_rng(0)
    total = 0
    for split, count in (("train", n), ("val", max(classes, n // 100))):
        for i in range(count):
            c = i % classes
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:06d}.jpg", quality=85)
            total += 1
    return total


def _child(which: str, root: str, size: int, workers: int, batch: int) -> None:
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seen = 0
    if which == "ours":
        from richkd_deploy.data import build_dataset, make_loader, train_transform

        ds = build_dataset("imagefolder", "train", root=root)
        ds = ds.with_transform(train_transform(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                               crop="random_resized"))
        loader = make_loader(ds, batch_size=batch, shuffle=True, num_workers=workers, seed=0)
    else:
        import torchvision.transforms as T
        from torchvision.datasets import ImageFolder

        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        ds = ImageFolder(str(Path(root) / "train"), transform=tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    for images, _labels, *_ in loader:
        seen += images.shape[0]
    elapsed = time.perf_counter() - t0
    del loader  # joins the workers, so RUSAGE_CHILDREN includes them
    main_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"which": which, "images": seen, "seconds": round(elapsed, 1),
                      "main_peak_mib": round(main_kb / 1024, 1), "worker_peak_mib": round(child_kb / 1024, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--root", type=Path, default=None, help="reuse/generate the folder here")
    ap.add_argument("--child", nargs=2, metavar=("WHICH", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.size, args.workers, args.batch)
        return
    from richkd_deploy.evaluate.latency import describe_machine

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "folder"
        if not (root / "train").is_dir():
            t0 = time.perf_counter()
            files = make_folder(root, args.n)
            print(f"generated {files} JPEG files (64x48) in {time.perf_counter() - t0:.1f}s under {root}")
        disk = sum(p.stat().st_size for p in (root / "train").rglob("*.jpg"))
        decoded_at_size = args.n * args.size * args.size * 3
        print(describe_machine())
        print(f"train files: {args.n}, {disk / 2**20:.1f} MiB on disk; held decoded in RAM at {args.size} px they "
              f"would take {decoded_at_size / 2**20:.0f} MiB (uint8; computed, not measured)")
        for which in ("ours", "torchvision"):
            out = subprocess.run([sys.executable, __file__, "--child", which, str(root), "--size", str(args.size),
                                  "--workers", str(args.workers), "--batch", str(args.batch)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{which:>11}: {r['images']} images in {r['seconds']}s; peak RSS main {r['main_peak_mib']} MiB, "
                  f"largest worker {r['worker_peak_mib']} MiB")


if __name__ == "__main__":
    main()
