"""Run `fit()` on a tiny BatchNorm-free model, alone or as one rank of a torchrun job.

    python tests/train/ddp_worker.py OUT                        # one process, batch 64
    torchrun --nproc_per_node 2 tests/train/ddp_worker.py OUT   # two ranks, batch 32 each

(test_ddp.py runs the single-process case in its own process, through `run_all`.)

Each process writes OUT/<scenario>.rank<r>.pt with the distiller's state_dict (student
weights, CRD banks and Z), so test_ddp.py can compare one process with the union of two.
The per-rank batch is 64 // world size; `lr_scaling: linear` on 2 ranks with lr 0.05
must equal lr 0.1 on one. No BatchNorm and no augmentation: otherwise 1 x 64 and
2 x 32 legitimately differ (per-rank batch statistics, per-batch augmentation seeds).
Failure injection: RICHKD_TEST_FAIL_RANK=r makes rank r raise in its first metric reduction.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from richkd_deploy.data import make_loader
from richkd_deploy.distill import create_distiller
from richkd_deploy.recipe import DistillConfig, OptimConfig
from richkd_deploy.train.context import TrainContext
from richkd_deploy.train.dist import DistContext
from richkd_deploy.train.log import RunLog
from richkd_deploy.train.loop import Stage, fit

CLASSES = 4


class NoBN(nn.Module):
    """conv -> relu -> global pool -> linear, returning (logits, features) like the model zoo."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, CLASSES)
        self.num_features, self.num_classes = width, CLASSES

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = F.relu(self.conv(x)).mean((2, 3))
        return self.fc(feats), feats


class Data(torch.utils.data.Dataset):
    """(image, label, index) triples from a fixed generator: the same on every rank."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.y = torch.randint(0, CLASSES, (n,), generator=g)
        self.x = torch.randn(n, 3, 8, 8, generator=g) + self.y.view(-1, 1, 1, 1) * 0.3

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i]), i


def run(name: str, method: str, n: int, epochs: int, out: Path, dist: DistContext, folder: str | None = None,
        resume: bool = False) -> None:
    torch.manual_seed(0)
    student, teacher = NoBN(8), NoBN(12)
    cfg = DistillConfig(method=method, nce_k=32, feat_dim=16)
    distiller = create_distiller(method, cfg, student=student, teacher=teacher, num_train=n,
                                 gather=dist.gather_cat if dist.enabled else None, train_labels=Data(n).y)
    # one process: lr 0.1; two ranks: lr 0.05 scaled linearly to 0.1
    optim = OptimConfig(epochs=epochs, batch_size=64 // dist.world_size, lr=0.1 / dist.world_size,
                        lr_scaling="linear", milestones=(100,), amp=False)
    stage = Stage(name="student", module=distiller, classifier=student, compute=distiller,
                  term_names=distiller.term_names, parameters=distiller.trainable_parameters(),
                  folder=out / (folder or name), epochs=epochs, lr=optim.lr)
    test = make_loader(Data(32), batch_size=16, shuffle=False, num_workers=0, seed=0)
    log = RunLog(out / (folder or name) / "log.txt", quiet=True, enabled=dist.is_main)
    ctx = TrainContext(device=torch.device("cpu"), log=log, seed=7, num_workers=0, resume=resume, quiet=True,
                       dist=dist)
    fit(stage, optim, ctx, Data(n), test)
    torch.save(distiller.state_dict(), out / f"{name}.rank{dist.rank}.pt")


def run_all(out: Path, dist: DistContext) -> None:
    run("vanilla", "vanilla", n=256, epochs=2, out=out, dist=dist)  # 4 steps per epoch
    run("crd_step", "crd", n=64, epochs=1, out=out, dist=dist)  # exactly one step
    run("crd", "crd", n=192, epochs=2, out=out, dist=dist)  # 3 steps per epoch
    # the same 2 epochs as 1 epoch, then a resume from rank 0's last.pt in a fresh distiller
    run("crd_first", "crd", n=192, epochs=1, out=out, dist=dist, folder="crd_resumed")
    dist.barrier()  # a new launch in real use: last.pt is complete before anyone reads it
    run("crd_resumed", "crd", n=192, epochs=2, out=out, dist=dist, resume=True)


def main() -> None:
    torch.set_num_threads(1)
    dist = DistContext.from_env("cpu")
    if os.environ.get("RICHKD_TEST_FAIL_RANK") == str(dist.rank):
        def fail(values: list[float]) -> list[float]:
            raise RuntimeError(f"injected failure on rank {dist.rank}")

        object.__setattr__(dist, "reduce_sums", fail)
    run_all(Path(sys.argv[1]), dist)
    dist.close()


if __name__ == "__main__":
    main()
