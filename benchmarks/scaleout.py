"""Wall time of the two stages issue 18 spreads over torchrun ranks, 1 rank vs N.

    python benchmarks/scaleout.py OUT [--nprocs 1 2] [--device cpu] [--quick]

- clip:     the CLIP target cache of synthetic images built by one process
            (`build_clip_cache`) and by N ranks (`clip.shards`), gloo between ranks
            (so N ranks may share one GPU); checks the caches are byte-identical.
- validate: `richkd-deploy validate RUN --nproc N` of an exported random resnet8
            run (synthetic images), onnxruntime CPU provider; checks results.json
            is the same minus timestamps and timings.

Each figure is the wall time of a fresh launch (torchrun, Python and torch start-up
included: that is what a user waits for), printed next to the 1-process baseline of
the same run, with the machine and the load average. `gpu_check.py` imports
`clip_scaling` / `validate_scaling` as two of its sections.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOLATILE = {"created_at", "seconds", "runtime"}


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
                PYTHONUNBUFFERED="1")


def _torchrun(nproc: int, args: list[str], timeout: float) -> float:
    """Wall seconds of one torchrun launch; raises with the tail of stderr if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(args[:3])} with {nproc} ranks exited {proc.returncode}: {proc.stderr[-1500:]}")
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- CLIP cache


class Images:
    """Synthetic uint8 images with `raw(i)` -> PIL, like the toolkit's datasets."""

    classes = [f"class_{i}" for i in range(10)]
    name = "scaleout"

    def __init__(self, n: int, size: int = 32) -> None:
        self.images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.labels = np.arange(n) % 10

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> Any:
        from PIL import Image

        return Image.fromarray(self.images[i])


def clip_worker(out: Path, arch: str, n: int, batch: int, workers: int, device_name: str) -> None:
    """One rank (or the single process) of the cache build; rank 0 records its build time."""
    import datetime

    import torch
    import torch.distributed as tdist

    from richkd_deploy.clip.cache import build_clip_cache, cache_fingerprint
    from richkd_deploy.clip.loader import load_clip
    from richkd_deploy.clip.prompts import ZeroShotHead, build_class_embeddings
    from richkd_deploy.clip.shards import build_clip_cache_distributed

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # gloo even on CUDA: only the final barrier crosses ranks, and ranks may share a GPU
        tdist.init_process_group("gloo", timeout=datetime.timedelta(seconds=1800))
    device = torch.device(device_name)
    loaded = load_clip(arch, "none", allow_random=True, device=device)
    ds = Images(n)
    emb = build_class_embeddings(loaded.model, loaded.tokenizer, ds.classes, ["a photo of a {}."], device=device)
    head = ZeroShotHead(emb, 100.0).to(device)
    fp = cache_fingerprint(loaded, ["a photo of a {}."], "spaces", 100.0, ds.name, ds)
    if world > 1:
        tdist.barrier()  # time the build, not the model load
    t0 = time.perf_counter()
    if world > 1:
        build_clip_cache_distributed(loaded, head, ds, out, fp, rank, world, device, batch, workers, quiet=True)
        tdist.barrier()
    else:
        build_clip_cache(loaded, head, ds, out, fp, device, batch, workers, quiet=True)
    if rank == 0:
        (out / "build_seconds.txt").write_text(f"{time.perf_counter() - t0:.4f}\n")
    if world > 1:
        tdist.destroy_process_group()


def clip_scaling(device: str, quick: bool, nprocs: list[int]) -> dict[str, Any]:
    from richkd_deploy.clip.cache import FEATURES_FILE, LOGITS_FILE
    from richkd_deploy.runs import sha256_file

    arch = "tiny-ViT" if quick or device == "cpu" else "ViT-L-14"
    n, batch, workers = (240, 16, 0) if quick else ((2400, 32, 0) if device == "cpu" else (16384, 256, 6))
    out: dict[str, Any] = {"model": arch, "images": n, "batch": batch, "num_workers_per_rank": workers,
                           "backend": "gloo", "runs": []}
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in nprocs:
            folder = Path(tmp) / f"n{k}"
            wall = _torchrun(k, [__file__, "clip-worker", str(folder), arch, str(n), str(batch), str(workers), device],
                             timeout=3600)  # positional: torchrun takes --n... prefixes as its own options
            build = float((folder / "build_seconds.txt").read_text())
            hashes[k] = [sha256_file(folder / f) for f in (LOGITS_FILE, FEATURES_FILE)]
            out["runs"].append({"nproc": k, "wall_s": round(wall, 2), "build_s": round(build, 3),
                                "images_per_s": round(n / build, 1), "load_avg": os.getloadavg()})
    base = out["runs"][0]["build_s"]
    for r in out["runs"]:
        r["speedup_vs_1"] = round(base / r["build_s"], 3)
    out["byte_identical"] = len({tuple(h) for h in hashes.values()}) == 1
    return out


# --------------------------------------------------------------------------- validate


def make_exported_run(root: Path, quick: bool) -> Path:
    """A random resnet8 student on synthetic images, exported (FP32 + INT8 ONNX)."""
    import torch

    from exporters.pipeline import export_run
    from richkd_deploy import data, models, recipe
    from richkd_deploy.student import STUDENT_FORMAT

    test, samples = (300, 100) if quick else (2000, 1000)
    names = ["gaussian_noise"] if quick else ["gaussian_noise", "defocus_blur", "brightness", "jpeg_compression"]
    r = recipe.from_dict({
        "name": "scaleout", "data": {"dataset": "synthetic", "test_limit": test, "train_limit": 300},
        "student": {"arch": "resnet8"}, "distill": {"method": "vanilla"},
        "export": {"calibration_images": 64, "parity_images": 64},
        "validate": {"batch_size": 128, "corruptions": {"names": names, "severities": [1, 3],
                                                        "samples": samples}}})
    torch.manual_seed(0)
    model = models.create_model("resnet8", num_classes=10)
    mean, std = data.default_mean_std("synthetic")
    payload = {"format": STUDENT_FORMAT, "model": model.state_dict(), "arch": "resnet8", "num_classes": 10,
               "classes": data.class_names("synthetic"), "input_size": 32, "channels": 3, "mean": list(mean),
               "std": list(std), "recipe": r.to_dict(), "recipe_hash": r.hash(), "clip_random": False, "clip": None,
               "method": "vanilla", "temperature": None}
    root.mkdir(parents=True)
    torch.save(payload, root / "student.pt")
    (root / "recipe.yaml").write_text(r.to_yaml())
    export_run(root, quiet=True, log=lambda _m: None)
    return root


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def validate_scaling(device: str, quick: bool, nprocs: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"provider": "cpu", "backend": "gloo", "runs": []}
    docs = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = make_exported_run(Path(tmp) / "run", quick)
        results = run / "eval" / "results.json"
        for k in nprocs:
            wall = _torchrun(k, ["-m", "richkd_deploy", "validate", str(run), "--quiet", "--provider", "cpu"],
                             timeout=3600)
            doc = json.loads(results.read_text())
            docs[k] = _strip(doc)
            out["runs"].append({"nproc": k, "wall_s": round(wall, 2), "load_avg": os.getloadavg()})
            results.unlink()
        out["test_samples"] = doc["dataset"]["test_samples"]
        out["corruption_cells"] = len(doc["dataset"]["corruptions"]) * len(doc["dataset"]["severities"])
        out["rows"] = len(doc["rows"])
    base = out["runs"][0]["wall_s"]
    for r in out["runs"]:
        r["speedup_vs_1"] = round(base / r["wall_s"], 3)
    out["results_identical"] = len({json.dumps(d, sort_keys=True) for d in docs.values()}) == 1
    return out


def summary(name: str, sec: dict[str, Any]) -> str:
    runs = ", ".join(f"{r['nproc']}p {r.get('build_s', r['wall_s'])}s ({r['speedup_vs_1']}x)" for r in sec["runs"])
    same = sec.get("byte_identical", sec.get("results_identical"))
    return f"{name:6s} {runs}; identical to 1 process: {same}"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "clip-worker":
        out, arch, n, batch, workers, device = argv[1:7]
        clip_worker(Path(out), arch, int(n), int(batch), int(workers), device)
        return 0
    from richkd_deploy.evaluate.latency import describe_machine, machine_info

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--stages", nargs="+", choices=["clip", "validate"], default=["clip", "validate"])
    a = p.parse_args(argv)
    info = machine_info()
    print(describe_machine(info), f"| load average {os.getloadavg()}", flush=True)
    report: dict[str, Any] = {"machine": info}
    for stage in a.stages:
        fn = clip_scaling if stage == "clip" else validate_scaling
        report[stage] = fn(a.device, a.quick, a.nprocs)
        print(summary(stage, report[stage]), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "scaleout.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
