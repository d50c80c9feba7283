"""Validation split across torchrun ranks: each rank runs a share of every image set
through every runtime, and the logits are gathered back in the original order.

`validate` spends its time in inference (clean test set + every corruption cell,
times every artifact). Under DDP each row's `predict` becomes `ShardedPredict`: rank r
runs a contiguous run of whole batches ([r*B/N, (r+1)*B/N) of the B batches, so each
batch a runtime sees is a batch of the single-process run and the logits are
bit-identical to it), then the shares are all-gathered in rank order. Every rank then
holds the same logits, so the metric code in `evaluate.rows`/`harness` runs unchanged
(its cost is negligible next to inference); rank 0 alone writes results.json, the
reports and the log, holds the run lock and shows the progress bar.

A runtime failing on one rank's share fails the row on every rank (the error is
shared with the gather), so all ranks keep calling the same collectives; a rank that
dies or hangs is reported as one line after RICHKD_DIST_TIMEOUT_S (torchrun usually
stops the others first).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as tdist

from richkd_deploy import faults
from richkd_deploy.errors import MissingDependencyError, RichKDError
from richkd_deploy.runs import atomic_write_text
from richkd_deploy.runtime.predictions import predict_all
from richkd_deploy.train.dist import TIMEOUT_ENV, DistContext, default_timeout_s


class RankFailedError(RichKDError):
    """Another validate rank stopped (crashed, was killed or hangs)."""


def batch_share(n: int, batch_size: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of `n` images, in whole batches of `batch_size`."""
    batches = -(-n // batch_size) if n else 0
    first, last = rank * batches // world_size, (rank + 1) * batches // world_size
    return slice(min(first * batch_size, n), min(last * batch_size, n))


def device_type_for(provider: str) -> str:
    """The process-group backend's device: nccl for the CUDA providers, gloo otherwise."""
    return "cuda" if provider in ("cuda", "tensorrt") else "cpu"


@contextlib.contextmanager
def collective(what: str, dist: DistContext) -> Iterator[None]:
    """Turn a collective broken by a lost rank into one line the user can act on."""
    try:
        yield
    except RuntimeError as exc:  # gloo/nccl errors (DistBackendError too) are RuntimeErrors
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise RankFailedError(f"validate rank {dist.rank}: lost the other ranks while {what} ({first}); one of them "
                              f"failed (see its error above) or hung longer than {TIMEOUT_ENV}="
                              f"{default_timeout_s()}s") from None


class _RemoteError(Exception):
    """Stands for the exception another rank raised on its share (same type name and message)."""


def _describe(exc: BaseException | None) -> tuple[str, str, bool] | None:
    return None if exc is None else (type(exc).__name__, str(exc), isinstance(exc, MissingDependencyError))


def _rebuild(desc: tuple[str, str, bool]) -> Exception:
    name, message, missing = desc
    if missing:
        return MissingDependencyError(message)
    return type(name, (_RemoteError,), {})(message)


class ShardedPredict:
    """`predict_all` on this rank's share, gathered: the full logits on every rank."""

    def __init__(self, dist: DistContext) -> None:
        self.dist = dist

    def __call__(self, runtime: Any, images: np.ndarray, batch_size: int, finite: bool = True) -> np.ndarray:
        share = batch_share(len(images), batch_size, self.dist.rank, self.dist.world_size)
        local: np.ndarray | None = None
        error: BaseException | None = None
        try:
            local = predict_all(runtime, images[share], batch_size, finite=finite)
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks below, then raised everywhere
            error = exc
        faults.pause(f"validate:rank{self.dist.rank}")
        parts: list[Any] = [None] * self.dist.world_size
        with collective(f"gathering {getattr(runtime, 'name', 'model')} logits", self.dist):
            tdist.all_gather_object(parts, (local, _describe(error)))
        failed = [(r, desc) for r, (_, desc) in enumerate(parts) if desc is not None]
        if failed:
            if error is not None and failed[0][0] == self.dist.rank:
                raise error
            raise _rebuild(failed[0][1])
        arrays = [p[0] for p in parts if p[0] is not None and len(p[0])]
        if not arrays:
            return local if local is not None else np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(arrays, 0)


def distribute_rows(rows: Sequence[Any], dist: DistContext) -> None:
    """Make every row predict through this rank's share (a no-op for one process)."""
    if dist.enabled:
        share = ShardedPredict(dist)
        for row in rows:
            row.predict_fn = share


def share_exit_code(code: int | None, dist: DistContext) -> int:
    """Rank 0's exit code on every rank (so torchrun's status is the verdict)."""
    if not dist.enabled:
        return int(code or 0)
    with collective("sharing the verdict", dist):
        return int(dist.broadcast([float(code or 0)])[0])


VERDICT_ENV = "RICHKD_VALIDATE_VERDICT"


def rank_exit_code(code: int, dist: DistContext) -> int:
    """What a rank exits with. Launched by `--nproc`, rank 0 hands the verdict to the
    launcher through a file and every rank exits 0: torchrun reads any non-zero exit
    as a crashed worker (a traceback, and 1 = "a gate failed" would be ambiguous)."""
    path = os.environ.get(VERDICT_ENV)
    if not path:
        return code
    if dist.is_main:
        atomic_write_text(Path(path), f"{code}\n")
    return 0


def launch(nproc: int, argv: Sequence[str]) -> int:
    """`richkd-deploy validate ...` again under torchrun with `nproc` ranks on this machine;
    the verdict's exit code (0/1), or 2 with one line when a rank failed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "richkd_deploy", "validate", *argv]
    with tempfile.TemporaryDirectory(prefix="richkd-validate-") as tmp:
        verdict = Path(tmp) / "exit_code"
        rc = subprocess.call(cmd, env=dict(os.environ, **{VERDICT_ENV: str(verdict)}))
        if rc == 0 and verdict.is_file():
            return int(verdict.read_text())
    print(f"error: validate --nproc {nproc}: a rank failed (its error is above); no verdict was written",
          file=sys.stderr)
    return 2
