"""The recipe's architecture names and weight specs, checked against the model registry.

Here rather than in `recipe.py`: the recipe is the ground floor and imports nothing
above it, while the registry (and the model files that fill it) stand on top of it.
`recipe check`, `train` and the training pipeline call this before anything is built.
"""

from __future__ import annotations

import difflib

from richkd_deploy.errors import RecipeError
from richkd_deploy.models.pretrained import check_spec
from richkd_deploy.models.registry import list_models, resolve_name
from richkd_deploy.recipe import Recipe


def check_architectures(recipe: Recipe) -> None:
    """Raise RecipeError naming `teacher.arch` or `student.arch` when it is not a
    registered model, with the closest registered names."""
    for key in ("teacher", "student"):
        arch = getattr(recipe, key).arch
        try:
            resolve_name(arch)
        except RecipeError:
            close = difflib.get_close_matches(arch, list_models(), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise RecipeError(f"{key}.arch: unknown architecture {arch!r}; {hint}see richkd-deploy models") from None
    check_weight_specs(recipe)


def check_weight_specs(recipe: Recipe) -> None:
    """Each weights spec (a file, URL or library tag) fits its architecture: a tag the
    library does not have, or a file that is not there, is refused before any training."""
    for key, arch, spec in (("teacher.checkpoint", recipe.teacher.arch, recipe.teacher.checkpoint),
                            ("teacher.init", recipe.teacher.arch, recipe.teacher.init),
                            ("student.init", recipe.student.arch, recipe.student.init)):
        check_spec(arch, spec, key)
