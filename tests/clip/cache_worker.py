"""Build the CLIP target cache of a fake training set, alone or as one rank of a torchrun job.

    python -m torch.distributed.run --standalone --nproc_per_node N tests/clip/cache_worker.py RUN

With N = 1 this is the single-process build (`clip.cache.build_clip_cache`); with
N > 1 every rank builds its shards and rank 0 assembles them (`clip.shards`), so
test_clip_shards.py can compare the two caches byte for byte.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from richkd_deploy.clip.targets import prepare_clip_targets
from richkd_deploy.runs import RunDir
from richkd_deploy.train.dist import DistContext
from tests.clip.test_clip_targets import make_recipe
from tests.fakes import MEAN, STD, FakeDataset

N_IMAGES, BATCH = 60, 8  # 8 batches, the last one short: 8 one-batch shards


def main() -> None:
    torch.set_num_threads(1)
    dist = DistContext.from_env("cpu")
    src = prepare_clip_targets(make_recipe(batch_size=BATCH), RunDir(Path(sys.argv[1])), FakeDataset(n=N_IMAGES),
                               None, "cpu", lambda m: None, MEAN, STD, build_cache=dist.is_main, quiet=True,
                               zero_shot=False, rank=dist.rank, world_size=dist.world_size, wait_timeout_s=120)
    assert src.num_images == N_IMAGES
    dist.barrier()
    dist.close()


if __name__ == "__main__":
    main()
