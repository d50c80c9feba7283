"""Vanilla vs KD vs RichKD L+F on Fashion-MNIST, several seeds, the same budget.

Runs the real CLI (`richkd-deploy train recipes/quickstart.yaml ...`) with the
quickstart architectures (resnet20 teacher -> resnet8 student) and random CLIP
weights explicitly allowed (no pretrained CLIP is reachable here, so no RichKD gain
is expected: the point is that the mechanics run and KD's effect is visible). The
teacher is trained once and shared by every run. Prints test top-1 and ECE per
method as mean and spread over seeds, and writes them as JSON.

    python benchmarks/fmnist_methods.py --seeds 0 1 2
    python benchmarks/fmnist_methods.py --methods vanilla kd crd crd:uniform   # CRD's negatives, both ways

A method `NAME:NEGATIVES` runs NAME with `distill.crd_negatives=NEGATIVES` (`other_class`,
the default as published, or `uniform`).

The defaults put the students in the regime where distillation shows: a teacher
trained on 4x the students' images, students on 3,000 images for 10 epochs (run to
convergence, since a student still at a high learning rate hides any difference).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.yaml"


def cli(*args: str) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "richkd_deploy", *args], cwd=REPO, env=env, check=True)


def test_metrics(run: Path) -> tuple[float, float]:
    from richkd_deploy.data.for_recipe import build_eval_datasets
    from richkd_deploy.evaluate import metrics
    from richkd_deploy.runtime import TorchRuntime, predict_all
    from richkd_deploy.runtime.predictions import eval_arrays
    from richkd_deploy.student import load_student

    student = load_student(run / "student.pt")
    ds = build_eval_datasets(student.recipe())
    x, labels = eval_arrays(ds.test, int(student.meta["input_size"]), student.meta["mean"], student.meta["std"])
    logits = predict_all(TorchRuntime(student.view), x, 512)
    return metrics.top_k_accuracy(logits, labels), metrics.ece(logits, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["vanilla", "kd", "richkd_lf"])
    ap.add_argument("--train-limit", type=int, default=3000, help="training images of each student")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--milestones", default=None, help="lr drops, e.g. 7,9 (default: at 70%% and 90%% of the epochs)")
    ap.add_argument("--test-limit", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--batch-size", type=int, default=None, help="optim.batch_size of teacher and students")
    ap.add_argument("--teacher", type=Path, default=None, help="reuse this teacher.pt instead of training one")
    ap.add_argument("--teacher-train-limit", type=int, default=12000)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--clip-model", default="tiny-ViT", help="random weights either way; ViT-B-32 is ~20 img/s on 2 cores")
    ap.add_argument("--out", type=Path, default=Path("runs/fmnist_methods"))
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    milestones = a.milestones or f"{max(1, round(0.7 * a.epochs))},{max(1, round(0.9 * a.epochs))}"
    common = ["-o", f"optim.epochs={a.epochs}", "-o", f"optim.milestones=[{milestones}]",
              "-o", "clip.pretrained=none", "-o", "clip.allow_random=true", "-o", f"clip.model={a.clip_model}",
              *(["-o", f"data.test_limit={a.test_limit}"] if a.test_limit else []),
              *(["-o", f"optim.batch_size={a.batch_size}"] if a.batch_size else []), "--quiet", "--force"]
    teacher_run = a.out / "teacher"
    t0 = time.perf_counter()
    if a.teacher is not None:
        teacher_ckpt = a.teacher
    else:
        # the teacher stage follows the quickstart recipe's teacher schedule on more images; the
        # one student epoch of this run is discarded
        cli("train", str(RECIPE), *common, "-o", f"data.train_limit={a.teacher_train_limit}", "-o", "distill.method=kd",
            "-o", f"teacher.epochs={a.teacher_epochs}", "-o", "optim.epochs=1",
            "-o", f"optim.milestones=[{max(1, a.teacher_epochs - 1)}]",  # the teacher's schedule: one lr drop
            "--run-dir", str(teacher_run))
        teacher_ckpt = teacher_run / "teacher" / "teacher.pt"
        print(f"teacher trained in {time.perf_counter() - t0:.0f}s: {teacher_ckpt}", flush=True)

    results: dict[str, list[dict[str, float]]] = {m: [] for m in a.methods}
    for seed in a.seeds:
        for method in a.methods:
            name, _, negatives = method.partition(":")
            run = a.out / f"{method.replace(':', '-')}-s{seed}"
            t0 = time.perf_counter()
            cli("train", str(RECIPE), *common, "-o", f"data.train_limit={a.train_limit}", "-o", f"seed={seed}",
                "-o", f"distill.method={name}", *(["-o", f"distill.crd_negatives={negatives}"] if negatives else []),
                "-o", f"teacher.checkpoint={teacher_ckpt.resolve()}", "--run-dir", str(run))
            acc, ece = test_metrics(run)
            results[method].append({"seed": seed, "top1": acc, "ece": ece, "seconds": time.perf_counter() - t0})
            print(f"{method:10s} seed {seed}: top-1 {acc:.4f}  ECE {ece:.4f}  ({time.perf_counter() - t0:.0f}s)",
                  flush=True)

    teacher = (f"teacher {a.teacher}" if a.teacher is not None
               else f"resnet20 teacher ({a.teacher_train_limit} images, {a.teacher_epochs} epochs)")
    print(f"\nFashion-MNIST, {teacher} -> resnet8 "
          f"students ({a.train_limit} images, {a.epochs} epochs, lr drops at {milestones}), "
          f"random {a.clip_model} CLIP; machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print("| method | top-1 (mean ± std) | ECE (mean ± std) | seeds |")
    print("|---|---|---|---|")
    for method, rows in results.items():
        top1 = np.array([r["top1"] for r in rows]) * 100
        ece = np.array([r["ece"] for r in rows]) * 100
        print(f"| {method} | {top1.mean():.2f} ± {top1.std(ddof=1) if len(rows) > 1 else 0:.2f} | "
              f"{ece.mean():.2f} ± {ece.std(ddof=1) if len(rows) > 1 else 0:.2f} | {len(rows)} |")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
