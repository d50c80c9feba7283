"""CLIP targets for distillation, as the recipe asks: the orchestration.

Load CLIP, build (or reuse) the prompt head, report zero-shot accuracy, and hand
back the recipe's target source: cached once per training image (`cache.py`), or
computed online on the student's augmented batch (`online.py`). Both answer
`get(indices, images) -> (clip_logits [B, K], clip_features [B, D])`
(`source.ClipTargetSource`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from richkd_deploy.clip.cache import CachedClipTargets, build_clip_cache, cache_fingerprint, wait_for_clip_cache
from richkd_deploy.clip.loader import load_clip
from richkd_deploy.clip.online import OnlineClipTargets
from richkd_deploy.clip.prompts import (
    TEXT_EMBEDDINGS_FILE,
    ZeroShotHead,
    load_or_build_text_embeddings,
    resolve_logit_scale,
)
from richkd_deploy.clip.shards import build_clip_cache_distributed
from richkd_deploy.clip.source import ClipTargetSource
from richkd_deploy.clip.zero_shot import evaluate_zero_shot
from richkd_deploy.errors import DataError
from richkd_deploy.runs import RunDir

Log = Callable[[str], None]


def _dataset_name(recipe: Any, dataset: Any) -> str:
    return str(getattr(dataset, "name", None) or getattr(recipe.data, "dataset", None) or type(dataset).__name__)


def prepare_clip_targets(recipe: Any, run_dir: RunDir, train_ds: Any, test_ds: Any | None,
                         device: torch.device | str, log: Log, mean: Sequence[float], std: Sequence[float],
                         build_cache: bool = True, *, quiet: bool = False, zero_shot: bool | None = None,
                         zero_shot_limit: int | None | str = "auto", num_workers: int | None = None,
                         wait_timeout_s: float = 6 * 3600, rank: int = 0,
                         world_size: int = 1) -> ClipTargetSource:
    """Load CLIP, build (or reuse) the prompt head, report zero-shot accuracy, and return the
    recipe's target source (`clip.targets`: cached or online).

    `build_cache=False` (DDP ranks other than 0) neither writes the text embeddings
    nor builds the cache; it waits for a valid cache instead. `zero_shot_limit`:
    "auto" = the whole test set on CUDA, at most 1,000 evenly spaced images on CPU;
    None = all; a number = at most that many. `zero_shot` (default: `build_cache`, so
    only the building rank spends time on it) turns the check on or off.
    `rank`/`world_size` > 1 (DDP): every rank builds its shards of the cache and rank 0
    assembles it (`clip.shards`); `build_cache` then only says who writes the text
    embeddings and runs the zero-shot check.
    """
    device = torch.device(device)
    cfg = recipe.clip
    workers = num_workers if num_workers is not None else (
        cfg.num_workers if getattr(cfg, "num_workers", None) is not None else recipe.data.num_workers)
    loaded = load_clip(cfg.model, cfg.pretrained, cfg.allow_random, device, log=log)
    classes = list(train_ds.classes)
    if test_ds is not None and list(test_ds.classes) != classes:
        raise DataError("the training and test sets have different class lists; check data.root")
    emb = load_or_build_text_embeddings(loaded, classes, cfg.templates, cfg.class_name_format,
                                        run_dir.clip_dir / TEXT_EMBEDDINGS_FILE, device, log, write=build_cache)
    scale = resolve_logit_scale(cfg.logit_scale, loaded.model)
    head = ZeroShotHead(emb, scale).to(device)
    log(f"CLIP zero-shot head: {len(classes)} classes x {len(cfg.templates)} templates, "
        f"class names '{cfg.class_name_format}', logit scale {scale:.4g}")

    if zero_shot is None:
        zero_shot = build_cache
    if zero_shot and test_ds is not None and len(test_ds):
        limit: int | None
        if zero_shot_limit == "auto":
            limit = None if device.type == "cuda" else 1000
        else:
            limit = zero_shot_limit  # type: ignore[assignment]
        acc, used = evaluate_zero_shot(loaded, head, test_ds, device, cfg.batch_size, limit, workers, quiet)
        note = " (random weights: expect chance level)" if loaded.is_random else ""
        log(f"CLIP zero-shot top-1 on the test set: {100 * acc:.2f}% ({used} of {len(test_ds)} images){note}")

    if cfg.targets == "online":
        return OnlineClipTargets(loaded, head, mean, std, device)

    fp = cache_fingerprint(loaded, cfg.templates, cfg.class_name_format, scale,
                           _dataset_name(recipe, train_ds), train_ds)
    if world_size > 1:
        built = build_clip_cache_distributed(loaded, head, train_ds, run_dir.clip_dir, fp, rank, world_size, device,
                                             cfg.batch_size, workers, log, quiet, timeout_s=wait_timeout_s)
        if rank != 0:
            return wait_for_clip_cache(run_dir.clip_dir, fp, timeout_s=wait_timeout_s, log=log)
        source = CachedClipTargets.open(run_dir.clip_dir, fp)
        source.built_now = built
        return source
    if build_cache:
        built = build_clip_cache(loaded, head, train_ds, run_dir.clip_dir, fp, device, cfg.batch_size,
                                 workers, log, quiet)
        source = CachedClipTargets.open(run_dir.clip_dir, fp)
        source.built_now = built
        return source
    return wait_for_clip_cache(run_dir.clip_dir, fp, timeout_s=wait_timeout_s, log=log)
