"""The CLIP target cache built by every DDP rank: disjoint shards, assembled by rank 0.

Under torchrun the cache pass (1.28M ImageNet images through ViT-L/14 before the
first student step) would otherwise run on rank 0 while N-1 GPUs wait. Here the
training set is cut into contiguous shards whose plan depends only on the dataset
size and the CLIP batch size, never on the world size or the sampler: rank r builds
shards r, r+N, r+2N, ... Every shard boundary is a multiple of the batch size, so
each batch CLIP sees is exactly a batch of the single-process build and the
assembled arrays are byte-identical to it.

A shard is `clip/shards/NNNNN.{logits,features}.npy` plus `NNNNN.json` (written
last, atomically) holding the cache fingerprint's digest, its index range and the
arrays' sha256s. A shard without its json, or whose json does not match its arrays,
is rebuilt; so a rank killed mid-shard loses at most that shard on resume, with any
world size. Rank 0 waits (polling files, not a collective: shards can take hours)
until every shard is valid, copies them into the cache exactly as `cache.py`
writes it (temp names, renamed when complete, metadata last) and removes the shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from richkd_deploy import faults
from richkd_deploy.clip.cache import (
    FEATURE_DTYPE,
    META_FILE,
    ClipCacheError,
    cache_arrays,
    validate_clip_cache,
    write_cache_meta,
)
from richkd_deploy.clip.encode import encode_dataset
from richkd_deploy.clip.loader import LoadedClip
from richkd_deploy.clip.prompts import ZeroShotHead
from richkd_deploy.runs import atomic_write, atomic_write_json, sha256_file

SHARDS_DIR = "shards"
MAX_SHARD_BATCHES = 64  # a killed rank loses at most this many batches of work
TARGET_SHARDS = 64  # small sets: about this many shards, so every rank of a large job has work

Log = Callable[[str], None]


def shard_plan(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges covering range(n), each a whole number of CLIP batches
    (the last may be shorter): a function of (n, batch_size) only."""
    batches = math.ceil(n / batch_size) if n else 0
    per = min(MAX_SHARD_BATCHES, max(1, math.ceil(batches / TARGET_SHARDS)))
    step = per * batch_size
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _paths(shard_dir: Path, i: int) -> tuple[Path, Path, Path]:
    stem = shard_dir / f"{i:05d}"
    return Path(f"{stem}.logits.npy"), Path(f"{stem}.features.npy"), Path(f"{stem}.json")


def shard_status(shard_dir: Path, i: int, start: int, stop: int, digest: str, batch_size: int) -> dict[str, Any] | None:
    """The shard's metadata when it is complete and matches (fingerprint, range, checksums), else None."""
    logits_p, feats_p, meta_p = _paths(shard_dir, i)
    try:
        meta = json.loads(meta_p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or (meta.get("fingerprint_sha256"), meta.get("start"), meta.get("stop"),
                                      meta.get("batch_size")) != (digest, start, stop, batch_size):
        return None
    try:
        if (sha256_file(logits_p), sha256_file(feats_p)) != (meta["sha256"]["logits"], meta["sha256"]["features"]):
            return None
    except (OSError, KeyError, TypeError):
        return None
    return meta


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def build_shard(loaded: LoadedClip, head: ZeroShotHead, train_ds: Any, shard_dir: Path, i: int, start: int,
                stop: int, digest: str, device: torch.device, batch_size: int, num_workers: int,
                quiet: bool) -> None:
    """Encode images [start, stop) and write the shard (arrays first, its json last)."""
    logits_p, feats_p, meta_p = _paths(shard_dir, i)
    with contextlib.suppress(FileNotFoundError):
        meta_p.unlink()
    n, k, d = stop - start, head.num_classes, loaded.embed_dim
    logits_a = np.zeros((n, k), dtype=np.float32)
    feats_a = np.zeros((n, d), dtype=FEATURE_DTYPE)
    written = np.zeros(n, dtype=bool)
    labels = np.asarray(train_ds.labels, dtype=np.int64)
    correct = 0
    for idx, feats in encode_dataset(loaded, train_ds, range(start, stop), device, batch_size, num_workers,
                                     f"CLIP cache shard {i}", quiet):
        logits = head(feats)
        logits_a[idx - start] = logits.cpu().numpy()
        feats_a[idx - start] = feats.cpu().numpy().astype(FEATURE_DTYPE)
        written[idx - start] = True
        correct += int((logits.argmax(1).cpu().numpy() == labels[idx]).sum())
        faults.pause("clip-cache:batch")
    if not written.all():
        raise ClipCacheError(f"CLIP cache shard {i} covered {int(written.sum())} of {n} images; the dataset "
                             "returned fewer items than its length: check the data folder")
    _save_npy(logits_p, logits_a)
    _save_npy(feats_p, feats_a)
    atomic_write_json(meta_p, {"fingerprint_sha256": digest, "start": start, "stop": stop, "batch_size": batch_size,
                               "correct": correct, "sha256": {"logits": sha256_file(logits_p),
                                                              "features": sha256_file(feats_p)}})


def build_my_shards(loaded: LoadedClip, head: ZeroShotHead, train_ds: Any, clip_dir: Path,
                    fingerprint: dict[str, Any], rank: int, world_size: int, device: torch.device,
                    batch_size: int, num_workers: int, log: Log, quiet: bool) -> int:
    """Build this rank's missing or invalid shards (r, r+N, ...); return how many were built."""
    shard_dir, digest = clip_dir / SHARDS_DIR, fingerprint_digest(fingerprint)
    shard_dir.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(len(train_ds), batch_size)
    mine = [(i, a, b) for i, (a, b) in enumerate(plan) if i % world_size == rank]
    todo = [(i, a, b) for i, a, b in mine if shard_status(shard_dir, i, a, b, digest, batch_size) is None]
    if mine:
        log(f"CLIP cache: rank {rank} builds {len(todo)} of its {len(mine)} shards "
            f"({len(plan)} shards in all, {len(mine) - len(todo)} already valid)")
    for i, a, b in todo:
        if not shard_dir.is_dir():  # rank 0 already assembled the cache from valid shards and removed them
            break
        build_shard(loaded, head, train_ds, shard_dir, i, a, b, digest, device, batch_size, num_workers, quiet)
    return len(todo)


def assemble_shards(clip_dir: Path, fingerprint: dict[str, Any], n: int, num_classes: int, feature_dim: int,
                    batch_size: int, timeout_s: float, log: Log, poll_s: float = 1.0,
                    started: float | None = None) -> None:
    """Rank 0: wait until every shard is valid, then write the cache as `cache.py` would and drop the shards."""
    shard_dir, digest = clip_dir / SHARDS_DIR, fingerprint_digest(fingerprint)
    plan = shard_plan(n, batch_size)
    metas: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    said = False
    while len(metas) < len(plan):
        for i, (a, b) in enumerate(plan):
            if i not in metas and _paths(shard_dir, i)[2].is_file():
                meta = shard_status(shard_dir, i, a, b, digest, batch_size)
                if meta is not None:
                    metas[i] = meta
        if len(metas) == len(plan):
            break
        if time.monotonic() > deadline:
            raise ClipCacheError(f"timed out after {timeout_s:.0f}s waiting for CLIP cache shards in {shard_dir} "
                                 f"({len(metas)} of {len(plan)} valid); check the other ranks' output")
        if not said:
            log(f"CLIP cache: waiting for the other ranks' shards ({len(metas)} of {len(plan)} ready)")
            said = True
        time.sleep(poll_s)
    with contextlib.suppress(FileNotFoundError):
        (clip_dir / META_FILE).unlink()
    with cache_arrays(clip_dir, n, num_classes, feature_dim) as (logits_mm, feats_mm):
        for i, (a, b) in enumerate(plan):
            logits_p, feats_p, _ = _paths(shard_dir, i)
            logits_mm[a:b] = np.load(logits_p, mmap_mode="r")
            feats_mm[a:b] = np.load(feats_p, mmap_mode="r")
    correct = sum(int(m["correct"]) for m in metas.values())
    elapsed = time.perf_counter() - (started if started is not None else time.perf_counter())
    write_cache_meta(clip_dir, fingerprint, n, feature_dim, correct, elapsed, log,
                     extra={"shards": len(plan), "shard_batch_size": batch_size})
    reason = validate_clip_cache(clip_dir, fingerprint)
    if reason is not None:  # never leave an assembled cache that does not check out
        raise ClipCacheError(f"the CLIP cache assembled from shards in {shard_dir} is not valid ({reason})")
    shutil.rmtree(shard_dir, ignore_errors=True)


def build_clip_cache_distributed(loaded: LoadedClip, head: ZeroShotHead, train_ds: Any, clip_dir: Path,
                                 fingerprint: dict[str, Any], rank: int, world_size: int,
                                 device: torch.device | str = "cpu", batch_size: int = 128, num_workers: int = 0,
                                 log: Log | None = None, quiet: bool = False,
                                 timeout_s: float = 6 * 3600) -> bool:
    """Every rank calls this: build its shards; rank 0 then assembles the cache. Returns False
    (touching nothing) when a valid cache with this fingerprint exists, True after a build.
    Ranks other than 0 return once their shards are written (they then wait for the cache)."""
    say = log or (lambda _m: None)
    reason = validate_clip_cache(clip_dir, fingerprint)
    if reason is None:
        if rank == 0:
            say(f"CLIP target cache in {clip_dir} is valid; reusing it")
        return False
    if rank == 0 and reason != "no cache yet":
        say(f"rebuilding the CLIP target cache in {clip_dir}: {reason}")
    t0 = time.perf_counter()
    device = torch.device(device)
    built = build_my_shards(loaded, head, train_ds, clip_dir, fingerprint, rank, world_size, device, batch_size,
                            num_workers, say, quiet)
    if rank == 0:
        assemble_shards(clip_dir, fingerprint, len(train_ds), head.num_classes, loaded.embed_dim, batch_size,
                        timeout_s, say, started=t0)
        say(f"CLIP cache: assembled from {len(shard_plan(len(train_ds), batch_size))} shards "
            f"by {world_size} ranks (rank 0 built {built})")
    return True

