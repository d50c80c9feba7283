"""A classifier trained elsewhere, made into a run folder that `export` and `validate` take.

Many users already have a fine-tuned torchvision/timm model and want only the export
and the verdict. Rather than a second export path, its weights (a `.pth`,
`.safetensors` or library tag, loaded strictly: the classifier must already have the
folder's class count) are written as a `student.pt` with the recipe that describes
them -- the image folder, input size, centre-crop ratio, normalisation -- so every
later command reads it exactly as it reads one of our trained students.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from richkd_deploy import __version__
from richkd_deploy import recipe as recipe_mod
from richkd_deploy.data.imagefolder import ImageFolderIndexed
from richkd_deploy.errors import RunError
from richkd_deploy.models import pretrained
from richkd_deploy.models.registry import create_model, resolve_name
from richkd_deploy.runs import atomic_write_text
from richkd_deploy.student import STUDENT_FORMAT, write_student

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def adopt_checkpoint(weights: str, arch: str, data_root: str | Path, run_dir: str | Path, *,
                     input_size: int | None = None, eval_crop_ratio: float | None = 0.875,
                     mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                     cache_dir: Path | None = None, force: bool = False, overrides: Sequence[str] = (),
                     log: Callable[[str], None] = print) -> Path:
    """Write `run_dir/student.pt` and `run_dir/recipe.yaml` for `weights` of `arch`,
    evaluated on the image folder `data_root` (train/ for INT8 calibration and the
    held-out split, val/ or test/ for the verdict). `overrides` (`key=value`, as `-o`)
    set the export and validate sections (precisions, corruptions, gates). Returns `run_dir`."""
    run = Path(run_dir)
    if (run / "student.pt").exists() and not force:
        raise RunError(f"{run} already holds a student.pt; pass --force to replace it, or choose another folder")
    canonical = resolve_name(arch)
    classes = ImageFolderIndexed.from_root(data_root, "train", bad_files="skip").classes
    model = create_model(canonical, num_classes=len(classes))
    size = int(input_size or getattr(model, "default_input_size", 224))
    cache = cache_dir or Path.home() / ".cache" / "richkd-deploy" / "checkpoints"
    pretrained.load_weights(model, canonical, weights, "--weights", cache, log, replace_classifier=False)
    data: dict[str, Any] = {
        "name": run.name or "adopted", "device": "cpu",
        "data": {"dataset": "imagefolder", "root": str(Path(data_root).resolve()), "input_size": size,
                 "eval_crop_ratio": eval_crop_ratio, "mean": list(mean), "std": list(std), "bad_files": "skip"},
        "teacher": {"arch": canonical}, "student": {"arch": canonical},
        "distill": {"method": "vanilla"},
    }
    recipe = recipe_mod.from_dict(data, base_dir=Path.cwd(), overrides=overrides)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "recipe.yaml", recipe.to_yaml())
    write_student({
        "format": STUDENT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": canonical, "num_classes": len(classes), "classes": list(classes),
        "input_size": size, "channels": 3,
        "mean": [float(m) for m in (mean * 3 if len(mean) == 1 else mean)],
        "std": [float(s) for s in (std * 3 if len(std) == 1 else std)],
        "recipe": recipe.to_dict(), "recipe_hash": recipe.hash(),
        "clip_random": False, "clip": None, "method": "external", "temperature": None, "teacher": None,
        "test_acc": math.nan, "version": __version__, "weights": str(weights),
    }, run / "student.pt")
    log(f"[adopt] {canonical} from {weights}: {len(classes)} classes, {size} px -> {run / 'student.pt'}")
    return run
