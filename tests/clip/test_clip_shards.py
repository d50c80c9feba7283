"""The CLIP cache built in shards by every DDP rank equals the single-process cache byte
for byte, a broken or half-written shard is rebuilt (never used), and the shard plan
does not depend on the world size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from richkd_deploy.clip.cache import (
    FEATURES_FILE,
    LOGITS_FILE,
    META_FILE,
    build_clip_cache,
    cache_fingerprint,
    validate_clip_cache,
)
from richkd_deploy.clip.prompts import ZeroShotHead, build_class_embeddings
from richkd_deploy.clip.shards import SHARDS_DIR, _paths, build_clip_cache_distributed, shard_plan
from richkd_deploy.runs import sha256_file
from tests.fakes import FakeDataset
from tests.train.test_ddp import run_bounded

WORKER = Path(__file__).with_name("cache_worker.py")


def arrays(clip_dir: Path) -> dict[str, str]:
    return {n: sha256_file(clip_dir / n) for n in (LOGITS_FILE, FEATURES_FILE)}


def test_shard_plan_is_whole_batches_and_world_size_free():
    plan = shard_plan(60, 8)
    assert plan[0] == (0, 8) and plan[-1] == (56, 60) and len(plan) == 8
    assert all(a % 8 == 0 for a, _ in plan) and sum(b - a for a, b in plan) == 60
    big = shard_plan(1_281_167, 256)  # ImageNet: 64-batch shards, at most 64 batches lost to a kill
    assert big[0] == (0, 64 * 256) and len(big) == 79
    assert shard_plan(0, 8) == []


@pytest.fixture()
def setup(tiny_clip):
    train = FakeDataset(n=60)
    head = ZeroShotHead(build_class_embeddings(tiny_clip.model, tiny_clip.tokenizer, train.classes, ["a {}"]), 1.0)
    fp = cache_fingerprint(tiny_clip, ["a {}"], "spaces", 1.0, "fake", train)
    return tiny_clip, head, train, fp


def test_sharded_build_equals_single_process_and_rebuilds_broken_shards(setup, tmp_path):
    clip, head, train, fp = setup
    single = tmp_path / "single"
    assert build_clip_cache(clip, head, train, single, fp, batch_size=8, quiet=True)

    sharded = tmp_path / "sharded"
    # rank 1 of 2 first (it returns once its shards are written), then rank 0 assembles
    assert build_clip_cache_distributed(clip, head, train, sharded, fp, 1, 2, batch_size=8, quiet=True)
    shard_dir = sharded / SHARDS_DIR
    assert sorted(p.name for p in shard_dir.glob("*.json")) == [f"{i:05d}.json" for i in (1, 3, 5, 7)]
    assert validate_clip_cache(sharded, fp) == "no cache yet"
    # a killed rank: shard 3 truncated after its json was written, shard 5 killed before its json
    logits3 = _paths(shard_dir, 3)[0]
    logits3.write_bytes(logits3.read_bytes()[:-4])
    _paths(shard_dir, 5)[2].unlink()
    stamp7 = _paths(shard_dir, 7)[0].stat().st_mtime_ns
    # resumed with another world size: rank 2 of 3 owns shards 2 and 5
    lines: list[str] = []
    build_clip_cache_distributed(clip, head, train, sharded, fp, 2, 3, batch_size=8, quiet=True, log=lines.append)
    assert "builds 2 of its 2 shards" in lines[-1]  # 2 (never built) and 5 (no json)
    build_clip_cache_distributed(clip, head, train, sharded, fp, 1, 3, batch_size=8, quiet=True, log=lines.append)
    assert "builds 1 of its 3 shards" in lines[-1]  # 1, 4, 7: only 4 is missing
    assert _paths(shard_dir, 7)[0].stat().st_mtime_ns == stamp7  # a valid shard is reused, not rebuilt
    # rank 0 of 3 builds 0, 3 (broken), 6 and assembles; it never uses the truncated shard
    assert build_clip_cache_distributed(clip, head, train, sharded, fp, 0, 3, batch_size=8, quiet=True,
                                        timeout_s=5)
    assert validate_clip_cache(sharded, fp) is None
    assert arrays(sharded) == arrays(single)
    assert json.loads((sharded / META_FILE).read_text())["sha256"] == \
        json.loads((single / META_FILE).read_text())["sha256"]
    assert not shard_dir.exists()  # the shards are dropped once assembled
    # a valid cache is reused by every rank without touching it
    assert not build_clip_cache_distributed(clip, head, train, sharded, fp, 1, 2, batch_size=8, quiet=True)


def test_rank0_times_out_when_a_shard_never_comes(setup, tmp_path):
    from richkd_deploy.clip.cache import ClipCacheError

    clip, head, train, fp = setup
    with pytest.raises(ClipCacheError, match="waiting for CLIP cache shards"):
        build_clip_cache_distributed(clip, head, train, tmp_path, fp, 0, 2, batch_size=8, quiet=True, timeout_s=0.5)
    assert validate_clip_cache(tmp_path, fp) == "no cache yet"


@pytest.mark.slow
def test_two_gloo_ranks_build_the_single_process_cache_byte_for_byte(tmp_path):
    caches = {}
    for nproc in (1, 2):
        run = tmp_path / f"n{nproc}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(WORKER), str(run)]
        proc = run_bounded(cmd, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert validate_clip_cache(run / "clip") is None
        caches[nproc] = arrays(run / "clip")
        if nproc == 2:
            assert json.loads((run / "clip" / META_FILE).read_text())["shards"] == 8
    assert caches[1] == caches[2]
    np.testing.assert_array_equal(np.load(tmp_path / "n1/clip" / LOGITS_FILE), np.load(tmp_path / "n2/clip" / LOGITS_FILE))
