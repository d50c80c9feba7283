"""`student.pt`: the one reader and writer of the trained student.

Export, validate, bench and the torch runtime all read the file here, so every
command refuses the same bad file with the same words, and the recipe the student
was trained with is rebuilt one way only: from the copy embedded in the file (a run's
`recipe.yaml` may have been edited since; the checkpoint cannot drift from itself).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from richkd_deploy import models
from richkd_deploy.errors import CheckpointError
from richkd_deploy.recipe import Recipe, from_dict
from richkd_deploy.runs import sha256_file

STUDENT_FORMAT = "richkd-deploy/student/1"
STUDENT_KEYS = ("model", "arch", "num_classes", "input_size", "mean", "std")


@dataclass
class Student:
    """The logits-only module to export or run, plus the checkpoint fields that describe it."""

    view: nn.Module
    meta: dict[str, Any]  # student.pt minus the weights
    sha256: str | None = None
    path: Path | None = None

    @property
    def payload(self) -> dict[str, Any]:
        """The metadata under the name the exporters use for it."""
        return self.meta

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = int(self.meta["input_size"])
        return int(self.meta.get("channels", 3)), size, size

    def recipe(self) -> Recipe:
        """The recipe the student was trained with. Files it names (teacher checkpoint,
        data root) are not required to still exist: a finished run needs neither."""
        return recipe_of(self.meta, self.path)


def read_student_payload(path: str | os.PathLike[str], require_recipe: bool = True) -> dict[str, Any]:
    """`student.pt` as `train` writes it: read through `models.load_checkpoint`
    (weights_only, one-line errors), then its format and keys checked."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist: train first (richkd-deploy train RECIPE) or pass the run folder")
    payload = models.load_checkpoint(p)
    if payload.get("format") != STUDENT_FORMAT:
        raise CheckpointError(f"{p} is not a richkd-deploy student checkpoint (format {payload.get('format')!r}, "
                              f"expected {STUDENT_FORMAT!r}); pass a run folder made by richkd-deploy train")
    missing = [k for k in STUDENT_KEYS if k not in payload]
    if require_recipe and not isinstance(payload.get("recipe"), dict):
        missing.append("recipe")
    if missing:
        raise CheckpointError(f"{p} lacks {', '.join(missing)}; retrain with this version of richkd-deploy")
    return payload


def load_student(path: str | os.PathLike[str], require_recipe: bool = True) -> Student:
    """The student rebuilt from `student.pt` (strict weights) as a logits-only module in
    eval mode, with its metadata and the file's sha256."""
    p = Path(path)
    payload = read_student_payload(p, require_recipe=require_recipe)
    model = models.create_model(payload["arch"], num_classes=int(payload["num_classes"]))
    models.load_state_dict_strict(model, payload["model"], source=str(p))
    meta = {k: v for k, v in payload.items() if k != "model"}
    return Student(view=models.export_view(model).eval(), meta=meta, sha256=sha256_file(p), path=p)


def recipe_of(meta: dict[str, Any], path: Path | None = None) -> Recipe:
    """Rebuild the embedded recipe (relative paths anchored at the checkpoint's folder)."""
    data = meta.get("recipe")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path or 'student.pt'} lacks recipe; retrain with this version of richkd-deploy")
    data = json.loads(json.dumps(data))  # a copy: the starting weights are done with once trained
    for section in ("teacher", "student"):
        if isinstance(data.get(section), dict) and "init" in data[section]:
            data[section]["init"] = None
    return from_dict(data, base_dir=path.parent if path is not None else ".", check_files=False)


def write_student(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write `student.pt` atomically after checking it holds what the readers need, so a
    file this writes is always one `load_student` accepts."""
    missing = [k for k in STUDENT_KEYS if k not in payload]
    if payload.get("format") != STUDENT_FORMAT or missing:
        raise CheckpointError(f"refusing to write {path}: not a {STUDENT_FORMAT} payload (missing {missing})")
    return models.save_checkpoint(payload, path)
