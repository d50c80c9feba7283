"""Datasets as a recipe describes them, shared by train, export and validate so all
three see the same held-out split, the same test subset and the same normalisation."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from richkd_deploy.data.build import build_dataset
from richkd_deploy.data.splits import holdout_split
from richkd_deploy.data.transforms import default_mean_std, eval_transform, train_transform
from richkd_deploy.errors import DataError
from richkd_deploy.recipe import Recipe

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RecipeDatasets:
    train: Any  # what the student trains on: the training set minus the held-out split
    holdout: Any | None  # held-out part of the training set, for temperature scaling
    test: Any
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dataset: str  # the dataset actually used ('synthetic' after a fallback)


def _three(values: tuple[float, ...]) -> tuple[float, float, float]:
    return tuple(values) * 3 if len(values) == 1 else tuple(values)  # type: ignore[return-value]


def _load(recipe: Recipe, split: str, limit: int | None) -> tuple[Any, str]:
    d = recipe.data
    try:
        return build_dataset(d.dataset, split, root=d.root, download=d.download, limit=limit,
                             seed=recipe.seed, bad_files=d.bad_files), d.dataset
    except DataError:
        if not d.synthetic_fallback:
            raise
        log.warning("%s is not available; data.synthetic_fallback is set: using generated images", d.dataset)
        return build_dataset("synthetic", split, limit=limit, seed=recipe.seed), "synthetic"


def build_recipe_datasets(recipe: Recipe, test_limit: int | None = None) -> RecipeDatasets:
    d = recipe.data
    train_full, used = _load(recipe, "train", d.train_limit)
    test, _ = _load(recipe, "test", test_limit or d.test_limit)
    default_mean, default_std = default_mean_std(used)
    mean, std = _three(d.mean or default_mean), _three(d.std or default_std)
    if d.holdout_fraction > 0:
        train, holdout = holdout_split(train_full, d.holdout_fraction, seed=recipe.seed)
    else:
        train, holdout = train_full, None
    eval_t = eval_transform(d.input_size, mean, std, crop_ratio=d.eval_crop_ratio)
    train = train.with_transform(train_transform(d.input_size, mean, std, crop_padding=d.crop_padding,
                                                 hflip=d.hflip, crop=d.train_crop, scale=(d.crop_scale_min, 1.0)))
    return RecipeDatasets(train=train, holdout=holdout.with_transform(eval_t) if holdout is not None else None,
                          test=test.with_transform(eval_t), classes=list(train_full.classes), mean=mean, std=std,
                          dataset=used)


def build_eval_datasets(recipe: Recipe, test_limit: int | None = None) -> RecipeDatasets:
    """Same split as training; validate uses `.test` and `.holdout` only."""
    return build_recipe_datasets(recipe, test_limit=test_limit)
