"""DDP on the CPU (gloo, 2 processes launched by torchrun): 2 x 32 trains like 1 x 64,
CRD banks stay identical across ranks, resume, one writer, and no hang when a rank fails.

The process-level cases share one run of tests/train/ddp_worker.py in this process and
one under torchrun with 2 ranks (a module fixture), because starting Python + torch is
most of their cost. Every launch runs in its own session and is killed whole on timeout.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from richkd_deploy.distill.crd import ContrastMemory
from richkd_deploy.errors import CheckpointError
from richkd_deploy.recipe import OptimConfig
from richkd_deploy.train.dist import DistContext, default_timeout_s
from richkd_deploy.train.log import RunLog
from richkd_deploy.train.loop import Stage, StopRequest, _check_world_size, scaled_lr
from tests.train.ddp_worker import NoBN, run_all
from tests.train.helpers import REPO, SMOKE

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run_bounded(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` in a new session; on timeout kill the whole session (torchrun and its
    workers), so a hanging rank fails the test instead of outliving it."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", RICHKD_DIST_TIMEOUT_S="120",
                    PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- no processes


def test_rank_batches_together_are_the_single_process_batch():
    """DistributedSampler interleaves ranks (perm[r::2]), so with the per-rank batch halved
    the k-th batches of both ranks are the k-th batch of one process; the epoch seed
    alone fixes the order (resume replays it)."""
    data = list(range(200))

    def batches(world: int, rank: int, batch: int, seed: int) -> list[list[int]]:
        order = list(DistContext(rank=rank, world_size=world).sampler(data, seed=seed))
        return [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]

    one = batches(1, 0, 64, seed=5)
    r0, r1 = batches(2, 0, 32, seed=5), batches(2, 1, 32, seed=5)
    assert len(one) == len(r0) == len(r1) == 3
    for k in range(3):
        assert sorted(r0[k] + r1[k]) == sorted(one[k])
        assert not set(r0[k]) & set(r1[k])
    assert batches(2, 0, 32, seed=5) == r0 and batches(2, 0, 32, seed=6) != r0
    # an odd-sized set is trimmed, never padded with repeats: equal shares, no duplicates
    odd = [list(DistContext(rank=r, world_size=2).sampler(list(range(7)), seed=0)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 3 and len(set(odd[0] + odd[1])) == 6


def test_linear_lr_scaling_and_resuming_with_another_world_size(tmp_path):
    assert scaled_lr(0.05, OptimConfig(lr_scaling="linear"), 4) == pytest.approx(0.2)
    assert scaled_lr(0.05, OptimConfig(lr_scaling="none"), 4) == 0.05
    stage = Stage(name="student", module=torch.nn.Linear(1, 1), classifier=torch.nn.Linear(1, 1), compute=None,
                  term_names=[], parameters=[], folder=tmp_path, epochs=1, lr=0.1)
    log = RunLog(tmp_path / "log.txt", quiet=True)
    with pytest.raises(CheckpointError, match="--nproc 2"):
        _check_world_size(stage, OptimConfig(lr_scaling="linear"), saved=2, now=4, log=log)
    _check_world_size(stage, OptimConfig(lr_scaling="none"), saved=2, now=4, log=log)
    assert "WARNING" in (tmp_path / "log.txt").read_text()


def test_ctrl_c_takes_effect_at_the_next_step_boundary():
    """fit() reads Ctrl-C between steps (a step cut after its forward would leave BatchNorm
    statistics that a resume moves again); the previous handler comes back afterwards."""
    before = signal.getsignal(signal.SIGINT)
    with StopRequest(DistContext.single()) as stop:
        stop.check()
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt here...
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):
            stop.check()  # ...but here
    assert signal.getsignal(signal.SIGINT) is before


def test_process_group_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv("RICHKD_DIST_TIMEOUT_S", raising=False)
    assert default_timeout_s() == 600
    monkeypatch.setenv("RICHKD_DIST_TIMEOUT_S", "45")
    assert default_timeout_s() == 45


# --------------------------------------------------------------------------- fit() on 1 and 2 processes


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory) -> tuple[Path, Path]:
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    run_all(one, DistContext.single())  # here: a launch costs seconds of imports
    ddp = run_bounded([*TORCHRUN, str(WORKER), str(two)], timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return one, two


def test_two_ranks_of_32_train_like_one_process_of_64(worker_runs):
    """BatchNorm-free model, no augmentation, 2 epochs x 4 steps; lr 0.05 x 2 (linear) = 0.1."""
    one, two = worker_runs
    a, r0, r1 = (load(p) for p in (one / "vanilla.rank0.pt", two / "vanilla.rank0.pt", two / "vanilla.rank1.pt"))
    torch.manual_seed(0)
    init = {f"student.{k}": v for k, v in NoBN(8).state_dict().items()}  # the worker's initial weights
    assert a.keys() == r0.keys() == init.keys()
    for k in a:
        assert torch.equal(r0[k], r1[k]), k  # DDP keeps the ranks' weights identical
        torch.testing.assert_close(r0[k], a[k], atol=1e-5, rtol=0, msg=k)
        assert (a[k] - init[k]).abs().max() > 1e-3, k  # and they did train


def test_crd_bank_after_one_step_equals_the_single_process_bank(worker_runs):
    """Each rank scores its 32 samples but applies the gathered update of all 64, so after
    the first step (same weights everywhere) every rank holds the one-process bank."""
    one, two = worker_runs
    a, r0, r1 = (load(p) for p in (one / "crd_step.rank0.pt", two / "crd_step.rank0.pt", two / "crd_step.rank1.pt"))
    init = ContrastMemory(16, 64, 32, seed=0)  # the banks before the step
    for bank in ("memory_v1", "memory_v2"):
        key = f"crd.memory.{bank}"
        assert torch.equal(r0[key], r1[key])
        torch.testing.assert_close(r0[key], a[key], atol=1e-6, rtol=0)
        assert (a[key] - getattr(init, bank)).abs().min(1).values.gt(0).all()  # every slot was updated


def test_crd_banks_and_z_identical_across_ranks_after_several_steps(worker_runs):
    _, two = worker_runs
    r0, r1 = load(two / "crd.rank0.pt"), load(two / "crd.rank1.pt")
    assert float(r0["crd.memory.z"].min()) > 0  # Z was estimated (from the gathered first batch)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k


def test_resume_under_ddp_equals_the_uninterrupted_run(worker_runs):
    """1 epoch, then every rank resumes from rank 0's last.pt: the same weights, banks and Z
    as 2 uninterrupted epochs (the epoch seed reaches the sampler and the CRD negatives)."""
    _, two = worker_runs
    for rank in (0, 1):
        full, resumed = load(two / f"crd.rank{rank}.pt"), load(two / f"crd_resumed.rank{rank}.pt")
        for k in full:
            torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=0, msg=k)


def test_only_rank_0_writes(worker_runs):
    _, two = worker_runs
    lines = (two / "crd" / "log.txt").read_text().splitlines()
    assert [ln.split("] ")[1].split()[1] for ln in lines] == ["1/2", "2/2"]  # one line per epoch, not two
    rows = [r for r in (two / "crd" / "metrics.csv").read_text().splitlines() if not r.startswith("#")]
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2"]
    state = load(two / "crd" / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["epoch"] == 2


# --------------------------------------------------------------------------- whole jobs


@pytest.mark.slow
def test_a_failing_rank_brings_the_job_down(tmp_path):
    """Rank 1 raises while rank 0 waits in a collective: torchrun stops the job with the
    error long before the process-group timeout (120 s here)."""
    t0 = time.monotonic()
    out = run_bounded([*TORCHRUN, str(WORKER), str(tmp_path)], timeout=110, env={"RICHKD_TEST_FAIL_RANK": "1"})
    assert out.returncode != 0
    assert "injected failure on rank 1" in out.stdout + out.stderr
    assert time.monotonic() - t0 < 110


@pytest.mark.slow
def test_cli_nproc_2_runs_richkd_lf_then_resumes(tmp_path):
    """`train --nproc 2` on the smoke recipe (teacher stage under DDP, CLIP cache in shards by both ranks,
    RichKD L+F with the gathered bank), then `torchrun ... -m richkd_deploy train --resume`
    to a second epoch (the form a multi-node job uses)."""
    run = tmp_path / "run"
    args = ["-m", "richkd_deploy", "train", str(SMOKE), "-o", "data.train_limit=320", "-o", "data.test_limit=100",
            "-o", "optim.batch_size=32", "-o", "distill.nce_k=64", "--run-dir", str(run), "--quiet"]
    first = run_bounded([sys.executable, *args, "-o", "optim.epochs=1", "--nproc", "2"], timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("done:") == 1
    log = (run / "train.log").read_text()
    for once in ("effective batch 64", "[teacher] epoch 1/1", "[teacher] resnet8 test top-1", "CLIP zero-shot top-1",
                 "CLIP target cache built", "[student] epoch 1/1"):
        assert log.count(once) == 1, once
    assert "CLIP cache: assembled from 3 shards by 2 ranks" in log  # 288 images, batch 100
    assert not (run / "clip" / "shards").exists()
    assert load(run / "teacher" / "checkpoints" / "last.pt")["world_size"] == 2
    second = run_bounded([*TORCHRUN, *args, "-o", "optim.epochs=2", "--resume"], timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert log.count("[student] resuming at epoch 2") == 1 and log.count("[student] epoch 2/2") == 1
    assert log.count("reusing the teacher trained earlier") == 1 and log.count("CLIP target cache built") == 1
    assert log.count("CLIP target cache in") == 1  # "... is valid; reusing it"
    lines = [ln for ln in (run / "metrics.csv").read_text().splitlines() if not ln.startswith("#")]
    assert [r["epoch"] for r in csv.DictReader(lines)] == ["1", "2"]
    payload = load(run / "student.pt")
    assert payload["format"] == "richkd-deploy/student/1" and payload["method"] == "richkd_lf"
