"""The cached CLIP targets (the authors' way, cheap): build, check, open, wait.

One pass of CLIP over the training set with CLIP's own preprocessing on the
dataset's raw (unaugmented) images. The result is two `.npy` files in the run's
`clip/` folder, memory-mapped during training and indexed by dataset index; they
are never part of a checkpoint (the authors' code stored them as model buffers,
~87 MB in every checkpoint).

- `train_logits.npy`   float32 [N, K]: zero-shot logits (the run's logit scale).
- `train_features.npy` float16 [N, D]: CLIP's image features as returned by
  `encode_image` (after the visual projection, BEFORE L2 normalisation). float16
  halves the file (ViT-L/14 on CIFAR-100: 77 MB instead of 154 MB); the features
  only feed a learned linear embedding, where 3 significant digits are plenty.
- `train_targets.json` the fingerprint (CLIP architecture + weights id, templates,
  class-name format, logit scale, class names, dataset name, size and a content
  hash of labels and a few images), shapes, file sizes and sha256s. It is written
  last, so its presence means the arrays are complete; a fingerprint mismatch, a
  missing, truncated or altered array rebuilds the cache (and says why), never a
  silent reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from richkd_deploy import faults
from richkd_deploy.clip.encode import encode_dataset
from richkd_deploy.clip.loader import LoadedClip
from richkd_deploy.clip.prompts import ZeroShotHead
from richkd_deploy.clip.source import ClipTargetSource
from richkd_deploy.errors import DataError, RichKDError
from richkd_deploy.runs import atomic_write_json, sha256_file

LOGITS_FILE = "train_logits.npy"
FEATURES_FILE = "train_features.npy"
META_FILE = "train_targets.json"
FEATURE_DTYPE = np.float16
CACHE_FORMAT = 1
_HASH_ROWS = 16

Log = Callable[[str], None]


class ClipCacheError(RichKDError):
    """The cached CLIP targets are missing, stale or corrupt and cannot be rebuilt here."""


def dataset_content_hash(dataset: Any, rows: int = _HASH_ROWS) -> str:
    """The dataset's own `fingerprint()` when it has one; otherwise sha256 of all labels and
    `rows` evenly spaced images: cheap, and it changes when the data or its order
    changes (a different split, limit or preprocessing of the raw data)."""
    own = getattr(dataset, "fingerprint", None)
    if callable(own):  # richkd_deploy.data datasets hash all images, labels and class names
        return str(own())
    h = hashlib.sha256()
    n = len(dataset)
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [dataset[i][1] for i in range(n)]
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    picks = np.unique(np.linspace(0, n - 1, num=min(n, rows)).round().astype(np.int64)) if n else []
    images = getattr(dataset, "images", None)
    for i in picks:
        row = images[int(i)] if images is not None else dataset.raw(int(i))
        if isinstance(row, Tensor):
            row = row.cpu().numpy()
        h.update(np.ascontiguousarray(np.asarray(row)).tobytes())
    return h.hexdigest()


def cache_fingerprint(loaded: LoadedClip, templates: Sequence[str], name_format: str, logit_scale: float,
                      dataset_name: str, dataset: Any) -> dict[str, Any]:
    """Everything the cached arrays depend on; any change means a rebuild."""
    return {
        "format": CACHE_FORMAT,
        "clip_model": loaded.model_name,
        "weights_id": loaded.weights_id,
        "image_size": loaded.image_size,
        "preprocess": {"mean": list(loaded.mean), "std": list(loaded.std),
                       "interpolation": loaded.interpolation, "resize_mode": loaded.resize_mode},
        "templates": list(templates),
        "class_name_format": name_format,
        "class_names": list(dataset.classes),
        "logit_scale": float(logit_scale),
        "dataset": dataset_name,
        "num_images": len(dataset),
        "content_sha256": dataset_content_hash(dataset),
        "feature_dtype": np.dtype(FEATURE_DTYPE).name,
    }


class CachedClipTargets(ClipTargetSource):
    """Targets read from the memory-mapped cache by dataset index (images are ignored)."""

    def __init__(self, logits: np.ndarray, features: np.ndarray, is_random: bool,
                 fingerprint: dict[str, Any] | None = None, built_now: bool = False) -> None:
        if logits.ndim != 2 or features.ndim != 2 or logits.shape[0] != features.shape[0]:
            raise ClipCacheError(f"cached CLIP targets have inconsistent shapes {logits.shape} and {features.shape}; "
                                 "delete the run's clip/ folder to rebuild them")
        self.logits = logits
        self.features = features
        self.num_images = int(logits.shape[0])
        self.num_classes = int(logits.shape[1])
        self.feature_dim = int(features.shape[1])
        self.is_random = is_random
        self.fingerprint = fingerprint or {}
        self.built_now = built_now

    @classmethod
    def open(cls, clip_dir: Path, fingerprint: dict[str, Any] | None = None) -> CachedClipTargets:
        """Memory-map a valid cache; raise ClipCacheError (saying why) otherwise."""
        reason = validate_clip_cache(clip_dir, fingerprint)
        if reason is not None:
            raise ClipCacheError(f"CLIP target cache in {clip_dir} is not usable ({reason}); "
                                 "run training again (it rebuilds it) or delete the folder")
        meta = json.loads((clip_dir / META_FILE).read_text())
        return cls(np.load(clip_dir / LOGITS_FILE, mmap_mode="r"), np.load(clip_dir / FEATURES_FILE, mmap_mode="r"),
                   is_random=str(meta["fingerprint"]["weights_id"]).startswith("random"),
                   fingerprint=meta["fingerprint"])

    def get(self, indices: Tensor, images: Tensor | None = None) -> tuple[Tensor, Tensor]:
        idx = indices.detach().to("cpu", torch.int64).numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_images):
            raise DataError(f"dataset index {int(idx.max())} is outside the CLIP cache of {self.num_images} images; "
                            "the training set changed since the cache was built: delete the run's clip/ folder")
        logits = torch.from_numpy(np.ascontiguousarray(self.logits[idx], dtype=np.float32))
        feats = torch.from_numpy(np.ascontiguousarray(self.features[idx]).astype(np.float32, copy=False))
        device = images.device if images is not None else indices.device
        non_blocking = device.type == "cuda"
        if non_blocking:
            logits, feats = logits.pin_memory(), feats.pin_memory()
        return logits.to(device, non_blocking=non_blocking), feats.to(device, non_blocking=non_blocking)


def validate_clip_cache(clip_dir: Path, fingerprint: dict[str, Any] | None = None) -> str | None:
    """None when the cache in `clip_dir` is complete and (if given) matches `fingerprint`,
    else the reason it is not usable."""
    meta_path = clip_dir / META_FILE
    if not meta_path.is_file():
        return "no cache yet"
    try:
        meta = json.loads(meta_path.read_text())
        saved = meta["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{META_FILE} is unreadable"
    if fingerprint is not None and saved != fingerprint:
        changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        return f"made with other settings: {', '.join(changed)} changed"
    try:
        n, k, d = int(saved["num_images"]), len(saved["class_names"]), int(meta["feature_dim"])
    except (KeyError, TypeError, ValueError):
        return f"{META_FILE} is incomplete"
    for name, shape, dtype in ((LOGITS_FILE, (n, k), np.float32), (FEATURES_FILE, (n, d), FEATURE_DTYPE)):
        path = clip_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != int(meta.get("sizes", {}).get(name, -1)):
            return f"{name} has the wrong size (truncated or replaced)"
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return f"{name} is corrupt ({type(exc).__name__})"
        if arr.shape != shape or arr.dtype != np.dtype(dtype):
            return f"{name} has shape {arr.shape} {arr.dtype}, expected {shape} {np.dtype(dtype).name}"
        del arr
        expected = meta.get("sha256", {}).get(name) if isinstance(meta.get("sha256"), dict) else None
        if expected is None:
            return f"{META_FILE} has no checksum for {name} (made by an older version)"
        if sha256_file(path) != expected:
            return f"{name} is corrupt (its sha256 differs from the one recorded when it was built)"
    return None


@contextlib.contextmanager
def cache_arrays(clip_dir: Path, n: int, num_classes: int, feature_dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The cache's logits and features as writable memmaps under temporary names; they
    are renamed to their final names only when the block completes, and removed
    otherwise, so a killed or failed build never leaves a cache that looks whole."""
    tmp_logits = clip_dir / f".{LOGITS_FILE}.{os.getpid()}.tmp"
    tmp_feats = clip_dir / f".{FEATURES_FILE}.{os.getpid()}.tmp"
    try:
        logits_mm = np.lib.format.open_memmap(tmp_logits, mode="w+", dtype=np.float32, shape=(n, num_classes))
        feats_mm = np.lib.format.open_memmap(tmp_feats, mode="w+", dtype=FEATURE_DTYPE, shape=(n, feature_dim))
        yield logits_mm, feats_mm
        logits_mm.flush()
        feats_mm.flush()
        del logits_mm, feats_mm
        os.replace(tmp_logits, clip_dir / LOGITS_FILE)
        os.replace(tmp_feats, clip_dir / FEATURES_FILE)
    finally:
        for tmp in (tmp_logits, tmp_feats):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def build_clip_cache(loaded: LoadedClip, head: ZeroShotHead, train_ds: Any, clip_dir: Path,
                     fingerprint: dict[str, Any], device: torch.device | str = "cpu", batch_size: int = 128,
                     num_workers: int = 0, log: Log | None = None, quiet: bool = False, force: bool = False) -> bool:
    """Build the cached targets unless a valid cache with this fingerprint exists.

    Idempotent: returns False (and touches nothing) when the cache is valid, True
    after a (re)build. Arrays go to temporary names and are renamed only when
    complete; the metadata file is removed first and written last, so an
    interrupted build is never mistaken for a valid cache.
    """
    say = log or (lambda _m: None)
    device = torch.device(device)
    reason = None if force else validate_clip_cache(clip_dir, fingerprint)
    if reason is None and not force:
        say(f"CLIP target cache in {clip_dir} is valid; reusing it")
        return False
    if reason != "no cache yet":
        say(f"rebuilding the CLIP target cache in {clip_dir}: {reason or 'forced'}")
    clip_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (clip_dir / META_FILE).unlink()
    n, k, d = len(train_ds), head.num_classes, loaded.embed_dim
    t0 = time.perf_counter()
    correct = 0
    labels = np.asarray(train_ds.labels, dtype=np.int64)
    with cache_arrays(clip_dir, n, k, d) as (logits_mm, feats_mm):
        written = np.zeros(n, dtype=bool)
        for idx, feats in encode_dataset(loaded, train_ds, range(n), device, batch_size, num_workers,
                                         "CLIP cache", quiet):
            logits = head(feats)
            logits_mm[idx] = logits.cpu().numpy()
            feats_mm[idx] = feats.cpu().numpy().astype(FEATURE_DTYPE)
            written[idx] = True
            correct += int((logits.argmax(1).cpu().numpy() == labels[idx]).sum())
            faults.pause("clip-cache:batch")
        if not written.all():
            raise ClipCacheError(f"CLIP cache build covered {int(written.sum())} of {n} images; the dataset "
                                 "returned fewer items than its length: check the data folder")
    write_cache_meta(clip_dir, fingerprint, n, d, correct, time.perf_counter() - t0, say)
    return True


def write_cache_meta(clip_dir: Path, fingerprint: dict[str, Any], n: int, feature_dim: int, correct: int,
                     elapsed: float, say: Log, extra: dict[str, Any] | None = None) -> None:
    """The metadata file, written last once both arrays are in place (also by `shards.py`)."""
    sizes = {name: (clip_dir / name).stat().st_size for name in (LOGITS_FILE, FEATURES_FILE)}
    sha256 = {name: sha256_file(clip_dir / name) for name in (LOGITS_FILE, FEATURES_FILE)}
    train_acc = correct / max(n, 1)
    atomic_write_json(clip_dir / META_FILE, {
        "fingerprint": fingerprint, "feature_dim": feature_dim, "sizes": sizes, "sha256": sha256,
        "features": "CLIP encode_image output (after projection, before L2 normalisation), float16",
        "train_zero_shot_top1": train_acc, "build_seconds": round(elapsed, 2), **(extra or {}),
    })
    say(f"CLIP target cache built: {n} images in {elapsed:.1f}s ({n / max(elapsed, 1e-9):.1f} img/s), "
        f"zero-shot top-1 on the training set {100 * train_acc:.2f}%")


def wait_for_clip_cache(clip_dir: Path, fingerprint: dict[str, Any], timeout_s: float = 6 * 3600,
                        poll_s: float = 2.0, log: Log | None = None) -> CachedClipTargets:
    """Poll until another process (DDP rank 0) has built a valid cache, then open it."""
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        if validate_clip_cache(clip_dir, fingerprint) is None:
            return CachedClipTargets.open(clip_dir, fingerprint)
        if time.monotonic() > deadline:
            raise ClipCacheError(f"timed out after {timeout_s:.0f}s waiting for the CLIP cache in {clip_dir}; "
                                 "check that rank 0 is running (its log says why it stopped)")
        if not said and log is not None:
            log(f"waiting for the CLIP target cache in {clip_dir}")
            said = True
        time.sleep(poll_s)
