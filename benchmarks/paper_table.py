"""The paper's CIFAR-100 table, measured here: vanilla, KD, CRD and RichKD L / F / L+F over seeds.

Given CIFAR-100, the mdistiller teacher and CLIP weights on disk (or reachable), this trains
every method through the library's own `train_run` (what `richkd-deploy train` calls) on
`recipes/paper-cifar100.yaml`, the authors' code as published, and prints mean +- std over the
seeds beside the published numbers for resnet32x4 -> resnet8x4 (RepDistiller, mdistiller): top-1,
ECE before and after temperature scaling, and the confident-correct / confident-wrong counts of
the paper's analysis (test images whose top-1 probability is at least
`validate.confidence_threshold`).

    python benchmarks/paper_table.py --seeds 0 1 2 \\
        --data-root ~/data/cifar --teacher-checkpoint ~/ckpt/cifar_teachers.tar \\
        --clip-pretrained ~/weights/ViT-L-14-openai.pt          # a GPU: 6 methods x 3 seeds x 240 epochs
    python benchmarks/paper_table.py --recipe smoke --negative-control   # minutes on a CPU

The baselines use the published settings: KD T 4, CE 0.1, KD 0.9 (as
`recipes/kd-baseline-cifar100.yaml`); CRD CE 1, CRD 0.8 with other-class negatives. The teacher is
loaded (or, when the recipe has no `teacher.checkpoint`, trained once) and shared by every run;
the CLIP target cache is built once and linked into the other RichKD runs (each run still checks
its fingerprint).

Random CLIP weights teach nothing, so a RichKD row trained with them is not a RichKD result. Such
rows are not run unless `--negative-control` is given, and then they are labelled
NEGATIVE CONTROL; whether CLIP was random is read back from each run's `student.pt`, not assumed.

Temperature scaling is fitted on the run's holdout split when it has one; the paper recipe has
none (the authors train on all 50,000 images), so the temperature is then cross-fitted on the
test set: fitted on one half, applied to the other, and the other way round. The table says which.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from richkd_deploy import models, recipe  # noqa: E402
from richkd_deploy.data.for_recipe import build_eval_datasets  # noqa: E402
from richkd_deploy.data.transforms import normalize_batch  # noqa: E402
from richkd_deploy.errors import RichKDError  # noqa: E402
from richkd_deploy.evaluate import metrics  # noqa: E402
from richkd_deploy.runs import atomic_write_json  # noqa: E402
from richkd_deploy.train import train_run  # noqa: E402

PRESETS = {"paper": REPO / "recipes" / "paper-cifar100.yaml", "smoke": REPO / "recipes" / "smoke.yaml"}
# Published CIFAR-100 top-1 (%), resnet32x4 -> resnet8x4 (reference.md: RepDistiller / mdistiller READMEs).
PUBLISHED = {"teacher": 79.42, "vanilla": 72.50, "kd": 73.33, "crd": 75.51, "dkd": 76.32}
PUBLISHED_PAIR = ("cifar100", "resnet32x4", "resnet8x4")


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    overrides: tuple[str, ...]
    richkd: bool = False


METHODS: dict[str, Method] = {m.key: m for m in (
    Method("vanilla", "vanilla (student alone)", ("distill.method=vanilla",)),
    Method("kd", "KD (T 4, CE 0.1, KD 0.9)",
           ("distill.method=kd", "distill.temperature=4.0", "distill.w_ce=0.1", "distill.w_logit=0.9")),
    Method("crd", "CRD (CE 1, CRD 0.8)", ("distill.method=crd", "distill.w_ce=1.0", "distill.w_feat=0.8")),
    Method("richkd_l", "RichKD L", ("distill.method=richkd_l",), richkd=True),
    Method("richkd_f", "RichKD F", ("distill.method=richkd_f",), richkd=True),
    Method("richkd_lf", "RichKD L+F", ("distill.method=richkd_lf",), richkd=True),
)}


@dataclass
class RunResult:
    method: str
    seed: int
    top1: float
    ece: float
    ece_ts: float
    temperature: float
    confident_correct: int
    confident_wrong: int
    n_test: int
    clip_random: bool
    seconds: float
    run_dir: str


@dataclass
class Table:
    recipe: str
    threshold: float
    calibration_split: str = "?"
    teacher_top1: float | None = None
    teacher_arch: str = ""
    runs: list[RunResult] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="paper", help="paper (recipes/paper-cifar100.yaml), smoke, or a recipe file")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--data-root", help="data.root: the folder holding CIFAR-100 (downloaded there when online)")
    ap.add_argument("--teacher-checkpoint", help="teacher.checkpoint: mdistiller's cifar_teachers.tar or a .pth")
    ap.add_argument("--clip-pretrained", help="clip.pretrained: a local CLIP checkpoint or an open_clip tag")
    ap.add_argument("--epochs", type=int, help="optim.epochs (milestones are scaled with it), for a shorter try")
    ap.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                    help="any recipe override, applied to every run")
    ap.add_argument("--negative-control", action="store_true",
                    help="run RichKD even when CLIP is random, labelled NEGATIVE CONTROL (never a RichKD result)")
    ap.add_argument("--out", type=Path, default=Path("runs/paper_table"), help="run folders go here")
    ap.add_argument("--json", type=Path, help="write every run's numbers here")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch output from training")
    return ap.parse_args(argv)


def base_overrides(a: argparse.Namespace, base: recipe.Recipe) -> list[str]:
    out = []
    if a.data_root:
        out.append(f"data.root={Path(a.data_root).expanduser().resolve()}")
    if a.teacher_checkpoint:
        out.append(f"teacher.checkpoint={Path(a.teacher_checkpoint).expanduser().resolve()}")
    if a.clip_pretrained:
        p = Path(a.clip_pretrained).expanduser()
        out.append(f"clip.pretrained={p.resolve() if p.exists() else a.clip_pretrained}")
    if a.epochs:
        scale = a.epochs / base.optim.epochs
        stones = sorted({min(a.epochs, max(1, round(m * scale))) for m in base.optim.milestones})
        out += [f"optim.epochs={a.epochs}", f"optim.milestones=[{', '.join(map(str, stones))}]"]
    return out + list(a.override)


def clip_is_random(r: recipe.Recipe) -> bool:
    return r.clip.pretrained.strip().lower() == "none"


def _test_logits(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 500) -> np.ndarray:
    model = model.eval().to(device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch].to(device))
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            out.append(logits.float().cpu())
    return torch.cat(out).numpy()


def _load(path: Path, arch: str, num_classes: int) -> torch.nn.Module:
    payload = models.load_checkpoint(path)
    model = models.create_model(arch, num_classes=num_classes)
    models.load_state_dict_strict(model, payload.get("model", payload), source=str(path))
    return model


def _eval_split(ds: Any, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, np.ndarray]:
    x = normalize_batch(ds.uint8_batch(np.arange(len(ds))), mean, std)
    return x, np.asarray(ds.labels, dtype=np.int64)


def temperature_scaled_ece(test: np.ndarray, labels: np.ndarray, holdout: tuple[np.ndarray, np.ndarray] | None
                           ) -> tuple[float, float, str]:
    """(ECE after scaling, T, where T was fitted): on the holdout when there is one, else
    cross-fitted on two halves of the test set, so no image is scaled by a T fitted on it."""
    if holdout is not None and len(holdout[1]):
        t = metrics.fit_temperature(*holdout)
        return metrics.ece(metrics.apply_temperature(test, t), labels), t, "holdout"
    order = np.random.default_rng(0).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2:])
    scaled = np.empty_like(test, dtype=np.float64)
    temps = []
    for fit_on, apply_to in (halves, halves[::-1]):
        t = metrics.fit_temperature(test[fit_on], labels[fit_on])
        scaled[apply_to] = metrics.apply_temperature(test[apply_to], t)
        temps.append(t)
    return metrics.ece(scaled, labels), float(np.mean(temps)), "test, 2-fold cross-fitted"


def evaluate_run(run: Path, threshold: float, device: torch.device) -> tuple[dict[str, Any], str, Any]:
    payload = models.load_checkpoint(run / "student.pt")
    r = recipe.from_dict(payload["recipe"], check_files=False)
    ds = build_eval_datasets(r)
    mean, std = payload["mean"], payload["std"]
    student = _load(run / "student.pt", payload["arch"], payload["num_classes"])
    x, y = _eval_split(ds.test, mean, std)
    logits = _test_logits(student, x, device)
    holdout = None
    if ds.holdout is not None and len(ds.holdout):
        hx, hy = _eval_split(ds.holdout, mean, std)
        holdout = (_test_logits(student, hx, device), hy)
    ece_ts, t, split = temperature_scaled_ece(logits, y, holdout)
    conf = metrics.confidence_analysis(logits, y, threshold)
    return ({"top1": metrics.top_k_accuracy(logits, y), "ece": metrics.ece(logits, y), "ece_ts": ece_ts,
             "temperature": t, "confident_correct": conf["confident_correct"],
             "confident_wrong": conf["confident_wrong"], "n_test": len(y),
             "clip_random": bool(payload.get("clip_random", False))}, split, (payload, x, y))


def teacher_top1(payload: dict[str, Any], x: torch.Tensor, y: np.ndarray, device: torch.device) -> float | None:
    t = payload.get("teacher")
    if not t or not t.get("checkpoint") or not Path(t["checkpoint"]).exists():
        return None
    teacher = _load(Path(t["checkpoint"]), t["arch"], payload["num_classes"])  # a tar's member comes extracted
    return metrics.top_k_accuracy(_test_logits(teacher, x, device), y)


def _link_clip_cache(src: Path | None, run: Path) -> None:
    """Give a new RichKD run the CLIP cache an earlier one built; its fingerprint decides
    whether it is reused (same training images, CLIP, prompts) or rebuilt."""
    if src is None or not src.is_dir():
        return
    dst = run / "clip"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(".") and not (dst / f.name).exists():
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)


def _shared_teacher(base: recipe.Recipe, overrides: list[str], out: Path, quiet: bool) -> list[str]:
    """Without a teacher checkpoint, train the teacher once (a KD run of one student epoch,
    discarded) and point every run at it."""
    if base.teacher.checkpoint:
        return []
    run = out / "teacher"
    r = recipe.load(base.source, [*overrides, "distill.method=kd", "optim.epochs=1", "optim.milestones=[1]"])
    t0 = time.perf_counter()
    train_run(r, run, force=True, quiet=quiet)
    print(f"teacher {r.teacher.arch} trained once in {time.perf_counter() - t0:.0f}s ({run})", flush=True)
    return [f"teacher.checkpoint={(run / 'teacher' / 'teacher.pt').resolve()}"]


def run_table(a: argparse.Namespace) -> tuple[Table, recipe.Recipe]:
    path = PRESETS.get(a.recipe, Path(a.recipe))
    base = recipe.load(path)
    overrides = base_overrides(a, base)
    base = recipe.load(path, overrides)
    table = Table(recipe=str(path), threshold=base.validate.confidence_threshold)
    device = torch.device("cuda" if base.device != "cpu" and torch.cuda.is_available() else "cpu")
    methods = [METHODS[m] for m in a.methods]
    if clip_is_random(base) and not a.negative_control:
        for m in methods:
            if m.richkd:
                table.refused[m.key] = ("not run: CLIP weights are random (clip.pretrained none), so this would not "
                                        "be a RichKD result; give --clip-pretrained, or --negative-control")
        methods = [m for m in methods if not m.richkd]
    random_ok = ["clip.allow_random=true"] if a.negative_control else []
    a.out.mkdir(parents=True, exist_ok=True)
    overrides += _shared_teacher(base, overrides, a.out, a.quiet) if any(m.key != "vanilla" for m in methods) else []
    clip_cache: Path | None = None
    teacher_done = False
    for seed in a.seeds:
        for m in methods:
            run = a.out / f"{m.key}-s{seed}"
            r = recipe.load(path, [*overrides, *m.overrides, f"seed={seed}", *(random_ok if m.richkd else [])])
            if m.richkd:
                _link_clip_cache(clip_cache, run)
            t0 = time.perf_counter()
            train_run(r, run, force=True, quiet=a.quiet)
            seconds = time.perf_counter() - t0
            if m.richkd and clip_cache is None:
                clip_cache = run / "clip"
            numbers, split, (payload, x, y) = evaluate_run(run, table.threshold, device)
            table.calibration_split = split
            if not teacher_done and m.key != "vanilla":
                table.teacher_top1, table.teacher_arch = teacher_top1(payload, x, y, device), r.teacher.arch
                teacher_done = True
            res = RunResult(method=m.key, seed=seed, seconds=seconds, run_dir=str(run), **numbers)
            table.runs.append(res)
            tag = " [NEGATIVE CONTROL: random CLIP]" if m.richkd and res.clip_random else ""
            print(f"{m.key:10s} seed {seed}: top-1 {res.top1:.4f}  ECE {res.ece:.4f} -> {res.ece_ts:.4f} (T "
                  f"{res.temperature:.2f})  confident {res.confident_correct} right / {res.confident_wrong} wrong  "
                  f"({seconds:.0f}s){tag}", flush=True)
            if m.richkd and res.clip_random and not a.negative_control:  # random despite the recipe
                table.refused[m.key] = "refused: the run's student.pt says its CLIP weights were random"
    return table, base


def _ms(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    v = np.asarray(values, dtype=np.float64) * scale
    if len(v) == 0:
        return "-"
    std = f"{v.std(ddof=1):.{digits}f}" if len(v) > 1 else "-"
    return f"{v.mean():.{digits}f} ± {std}"


def format_table(table: Table, base: recipe.Recipe, seeds: Sequence[int], methods: Sequence[str]) -> list[str]:
    comparable = (base.data.dataset, base.teacher.arch, base.student.arch) == PUBLISHED_PAIR
    pub = (lambda k: f"{PUBLISHED[k]:.2f}" if k in PUBLISHED else "") if comparable else (lambda k: "n/a")
    lines = [f"recipe {table.recipe}: {base.data.dataset}, {base.teacher.arch} -> {base.student.arch}, "
             f"{base.optim.epochs} epochs, seeds {' '.join(map(str, seeds))}; CLIP {base.clip.model} "
             f"pretrained={base.clip.pretrained}",
             f"top-1 and ECE in %, mean ± std over seeds; ECE after temperature scaling fitted on the "
             f"{table.calibration_split}; confident = top-1 probability >= {table.threshold:g} (test images, mean "
             "per seed)"]
    if not comparable:
        lines.append("published column: n/a, the published numbers are for CIFAR-100 resnet32x4 -> resnet8x4 "
                     f"({', '.join(f'{k} {v}' for k, v in PUBLISHED.items())})")
    lines += ["", "| method | top-1 | published top-1 | ECE | ECE after TS | confident right | confident wrong | seeds |",
              "|---|---|---|---|---|---|---|---|"]
    teacher = f"{100 * table.teacher_top1:.2f}" if table.teacher_top1 is not None else "not measured"
    lines.append(f"| teacher {table.teacher_arch or base.teacher.arch} | {teacher} | {pub('teacher')} | | | | | |")
    for key in methods:
        m = METHODS[key]
        rows = [r for r in table.runs if r.method == key]
        if key in table.refused:
            lines.append(f"| {m.label} | {table.refused[key]} | | | | | | |")
            continue
        if not rows:
            continue
        label = m.label + (" **NEGATIVE CONTROL: random CLIP, not a RichKD result**"
                           if m.richkd and any(r.clip_random for r in rows) else "")
        cc = np.mean([r.confident_correct for r in rows])
        cw = np.mean([r.confident_wrong for r in rows])
        lines.append(f"| {label} | {_ms([r.top1 for r in rows])} | {pub(key)} | {_ms([r.ece for r in rows])} | "
                     f"{_ms([r.ece_ts for r in rows])} | {cc:.0f} | {cw:.0f} | {len(rows)} |")
    if comparable:
        lines.append(f"| DKD | not run here | {PUBLISHED['dkd']:.2f} | | | | | |")
    load = os.getloadavg()
    lines += ["", f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}, {'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}"
              f"; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
              f"training time {sum(r.seconds for r in table.runs) / 60:.1f} min over {len(table.runs)} runs"]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        table, base = run_table(a)
    except RichKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n" + "\n".join(format_table(table, base, a.seeds, a.methods)), flush=True)
    if a.json:
        doc = {"recipe": table.recipe, "threshold": table.threshold, "calibration_split": table.calibration_split,
               "teacher_top1": table.teacher_top1, "refused": table.refused,
               "runs": [vars(r) for r in table.runs],
               "published": PUBLISHED}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(a.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
