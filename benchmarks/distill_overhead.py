"""What does RichKD cost per training step, next to plain KD, on this machine?

Times one training step (forward, backward, SGD step) of vanilla, KD, CRD and
RichKD L+F with cached CLIP targets, resnet32x4 -> resnet8x4, batch 64, 32x32
random images, CIFAR-100 sizes (100 classes, a CRD bank of 50,000 slots,
nce_k 16384, 768-d CLIP features as from ViT-L/14). The methods are measured in
one process, interleaved (the order rotates every repetition, so drift from
other load hits all of them alike), and reported as medians and as ratios to KD.
Target: RichKD L+F <= 1.25x KD.

Also prints the CRD banks' memory for 50,000 slots and the CLIP cache build
speed (images/s) for 1,000 images through a random-weight ViT-B-32.

    .venv/bin/python benchmarks/distill_overhead.py [--reps 9] [--cache-images 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from richkd_deploy.clip.cache import CachedClipTargets  # noqa: E402
from richkd_deploy.distill.distillers import create_distiller  # noqa: E402
from richkd_deploy.evaluate.latency import describe_machine  # noqa: E402
from richkd_deploy.models import create_model  # noqa: E402
from richkd_deploy.recipe import DistillConfig  # noqa: E402

METHODS = ("vanilla", "kd", "crd", "richkd_lf")


def fake_cache(folder: Path, n: int, k: int, d: int) -> CachedClipTargets:
    """Random targets in the real on-disk format (float32 logits, float16 features, memory-mapped)."""
    rng = np.random.default_rng(0)
    logits = np.lib.format.open_memmap(folder / "logits.npy", mode="w+", dtype=np.float32, shape=(n, k))
    feats = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=(n, d))
    for start in range(0, n, 10_000):
        stop = min(n, start + 10_000)
        logits[start:stop] = rng.standard_normal((stop - start, k), dtype=np.float32)
        feats[start:stop] = rng.standard_normal((stop - start, d), dtype=np.float32)
    logits.flush()
    feats.flush()
    del logits, feats
    return CachedClipTargets(np.load(folder / "logits.npy", mmap_mode="r"),
                             np.load(folder / "features.npy", mmap_mode="r"), is_random=True)


def bench_steps(args: argparse.Namespace, clip: CachedClipTargets) -> dict[str, list[float]]:
    cfg = DistillConfig(nce_k=args.nce_k)
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=args.classes).eval()
    student0 = create_model("resnet8x4", num_classes=args.classes).state_dict()
    runs = {}
    for method in METHODS:
        student = create_model("resnet8x4", num_classes=args.classes)
        student.load_state_dict(student0)
        d = create_distiller(method, cfg, student, teacher, clip, args.n_data, "cpu",
                             train_labels=torch.arange(args.n_data) % args.classes)
        d.train()
        opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        runs[method] = (d, opt)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32, generator=g)
    labels = torch.randint(0, args.classes, (args.batch,), generator=g)

    def step(method: str) -> float:
        d, opt = runs[method]
        idx = torch.randperm(args.n_data, generator=g)[: args.batch]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, terms = d(images, labels, idx)
        sum(terms.values()).backward()
        opt.step()
        return time.perf_counter() - t0

    for method in METHODS:
        for _ in range(args.warmup):
            step(method)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for rep in range(args.reps):
        order = METHODS[rep % len(METHODS):] + METHODS[: rep % len(METHODS)]
        for method in order:
            times[method].append(step(method))
        print(f"  rep {rep + 1}/{args.reps}: " + ", ".join(f"{m} {1000 * times[m][-1]:.0f} ms" for m in METHODS),
              flush=True)
    bank = runs["richkd_lf"][0].crd.memory
    args.bank_bytes = sum(b.numel() * b.element_size() for b in bank.buffers())
    args.embed_bytes = sum(p.numel() * p.element_size() for n, p in runs["richkd_lf"][0].named_parameters()
                           if n.startswith("embed_"))
    return times


def bench_cache(n_images: int, batch: int) -> tuple[float, float]:
    """(images/s of build_clip_cache, seconds per text prompt) with a random ViT-B-32."""
    from richkd_deploy.clip.cache import build_clip_cache, cache_fingerprint
    from richkd_deploy.clip.loader import load_clip
    from richkd_deploy.clip.prompts import ZeroShotHead, build_class_embeddings
    from richkd_deploy.recipe import DEFAULT_TEMPLATES

    class Images:
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.images = rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
            self.labels = np.arange(n_images) % 100
            self.classes = [f"class_{i}" for i in range(100)]

        def __len__(self) -> int:
            return n_images

        def raw(self, i: int):
            from PIL import Image

            return Image.fromarray(self.images[i])

    ds = Images()
    loaded = load_clip("ViT-B-32", "none", allow_random=True)
    # The text tower runs once per run (1,200 prompts for CIFAR-100, ~7 TFLOP at 77 tokens for
    # ViT-B-32: minutes on 2 CPU cores); one template is enough to time the per-prompt cost.
    templates = DEFAULT_TEMPLATES[:1]
    t0 = time.perf_counter()
    emb = build_class_embeddings(loaded.model, loaded.tokenizer, ds.classes, templates)
    text_s = (time.perf_counter() - t0) / len(ds.classes)
    head = ZeroShotHead(emb, 100.0)
    fp = cache_fingerprint(loaded, templates, "spaces", 100.0, "bench", ds)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_clip_cache(loaded, head, ds, Path(tmp), fp, batch_size=batch, num_workers=0, quiet=True)
        elapsed = time.perf_counter() - t0
    return n_images / elapsed, text_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--n-data", type=int, default=50_000)
    p.add_argument("--nce-k", type=int, default=16384)
    p.add_argument("--clip-dim", type=int, default=768)
    p.add_argument("--cache-images", type=int, default=1000, help="0 skips the cache-build timing")
    p.add_argument("--cache-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=1, help="0 skips the step timing (cache build only)")
    args = p.parse_args(argv)
    print(describe_machine())
    if args.steps:
        report_steps(args)
    if args.cache_images > 0:
        ips, text_s = bench_cache(args.cache_images, args.cache_batch)
        print(f"CLIP cache build, random ViT-B-32 at 224 px, {args.cache_images} images: {ips:.1f} images/s; "
              f"text tower {1000 * text_s:.0f} ms per prompt (x 1,200 prompts for 100 classes x 12 templates, "
              "once per run)")
    print(describe_machine())
    return 0


def report_steps(args: argparse.Namespace) -> None:
    print(f"resnet32x4 -> resnet8x4, batch {args.batch}, 32x32, {args.classes} classes, CRD bank {args.n_data} slots, "
          f"nce_k {args.nce_k}, CLIP features {args.clip_dim}-d (cached, float16 on disk)")
    with tempfile.TemporaryDirectory() as tmp:
        clip = fake_cache(Path(tmp), args.n_data, args.classes, args.clip_dim)
        times = bench_steps(args, clip)
    kd = statistics.median(times["kd"])
    print(f"\nper training step (median of {args.reps}, interleaved), ratio to KD:")
    for m in METHODS:
        med = statistics.median(times[m])
        print(f"  {m:10s} {1000 * med:8.1f} ms   {med / kd:5.2f}x KD   (min {1000 * min(times[m]):.1f} ms)")
    ratio = statistics.median(times["richkd_lf"]) / kd
    print(f"RichKD L+F (cached) / KD = {ratio:.3f}: {'within' if ratio <= 1.25 else 'ABOVE'} the 1.25x target")
    print(f"CRD banks for {args.n_data} slots x 128-d x 2 views: {args.bank_bytes:,} bytes "
          f"({args.bank_bytes / 2**20:.1f} MiB); embeddings {args.embed_bytes:,} bytes")


if __name__ == "__main__":
    raise SystemExit(main())
