"""Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020), device-agnostic.

Same mathematics as the reference implementation (RepDistiller `crd/memory.py`,
`crd/criterion.py`): two memory banks with one unit vector per training image
(`memory_v1` holds student embeddings, `memory_v2` target embeddings), K
negatives per sample with the positive at the sample's own index, scores
`exp(<v, m> / T) / Z` with Z estimated once on the first batch, the NCE
loss of the reference, and a momentum update of the positives' slots with
renormalisation. What differs, and why:

- Negatives. `negatives="other_class"` (the recipe's default, `distill.crd_negatives`)
  draws them from the training images whose label differs from the anchor's, as
  RepDistiller's and mdistiller's `CIFAR100InstanceSample` (reused by the RichKD
  authors) do with per-class index lists: never a same-class image, never the positive.
  Theirs is a numpy draw per image in the data loader, without replacement when K fits
  in the other classes; ours is one vectorised draw per batch on the bank's device,
  with replacement, as NCE's i.i.d. noise samples (at CIFAR-100 sizes, K 16,384 from
  49,500 other-class images, about 15% of the draws repeat one; without replacement
  would cost a sort over all N slots per anchor and step). `negatives="uniform"` draws
  from all N slots (RepDistiller's `AliasMethod` with uniform weights), same-class
  images and the positive included: with 10 classes, or K close to N, a different
  estimator.
- No hard-coded `.cuda()`: buffers live where the module lives; negatives come
  from a `torch.Generator` on that device.
- Scoring. When the bank is small next to the samples drawn (CIFAR: 50,000 slots
  vs 64 x 16,385 draws) the scores are computed densely, `v @ memory.T`, and the
  drawn columns are gathered: one GEMM reading the bank once instead of copying
  B x (K+1) x D rows (537 MB per view per step at CIFAR sizes). Same numbers.
  Large banks (ImageNet) use the reference's gather + bmm.
- Float32 always (autocast off inside): `exp(1 / 0.07)` overflows float16.
- The memory update is computed (and, with `gather`, collected from every DDP
  rank) in `forward`, but written into the bank at the start of the next
  `forward`, in `state_dict()`, or on `flush()`. The dense scores keep the bank
  itself for backward, so writing it in place before `backward()` would be an
  autograd error; deferring keeps the reference's order (batch t is scored
  against the bank before its own update, batch t+1 after it) without copying
  the bank every step.
- Z and the banks are registered buffers, so a checkpoint restores both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Gather = Callable[[Tensor], Tensor]
_EPS = 1e-7
NEGATIVE_MODES = ("other_class", "uniform")


class Embed(nn.Module):
    """Linear projection to the contrastive space, then L2 normalisation (CRD's `Embed`)."""

    def __init__(self, in_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def _default_seed(seed: int) -> int:
    """Different DDP ranks draw different negatives; the banks' init does not depend on it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return seed + torch.distributed.get_rank()
    return seed


class ContrastMemory(nn.Module):
    """Two memory banks, negative sampling, NCE scores and the momentum update."""

    def __init__(self, feat_dim: int, n_data: int, nce_k: int, nce_t: float = 0.07, momentum: float = 0.5,
                 device: torch.device | str | None = None, seed: int = 0, mode: str = "auto",
                 labels: Tensor | Any | None = None, negatives: str = "uniform") -> None:
        """`labels`: the class of every training image (slot), needed by
        `negatives="other_class"`; `negatives="uniform"` ignores them."""
        super().__init__()
        if mode not in ("auto", "dense", "gather"):
            raise ValueError(f"mode must be auto, dense or gather, got {mode!r}")
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {', '.join(NEGATIVE_MODES)}, got {negatives!r}")
        self.negatives = negatives
        self.feat_dim, self.n_data, self.nce_k = int(feat_dim), int(n_data), int(nce_k)
        self.nce_t, self.momentum, self.mode = float(nce_t), float(momentum), mode
        self.seed = int(seed)
        # Uniform init in [-stdv, stdv] like CRD; a fixed CPU generator, so every DDP rank
        # starts from the same banks.
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        g = torch.Generator().manual_seed(self.seed)
        for name in ("memory_v1", "memory_v2"):
            bank = torch.rand(n_data, feat_dim, generator=g).mul_(2 * stdv).add_(-stdv)
            self.register_buffer(name, bank.to(device) if device is not None else bank)
        self.register_buffer("z", torch.full((2,), -1.0, device=device))
        if negatives == "other_class":
            self._register_class_index(labels, device)
        # Created now, not on first use: the trainer reseeds (each epoch) and restores (resume)
        # the generators it finds on the module, and would miss one that does not exist yet.
        # On the device the bank really lives on ("cuda" -> "cuda:0"), so `_generator` keeps it.
        self._gen = torch.Generator(device=self.z.device).manual_seed(_default_seed(self.seed))
        self._z_known = False
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    # -- sampling ----------------------------------------------------------------------

    def _register_class_index(self, labels: Tensor | Any | None, device: torch.device | str | None) -> None:
        """The per-class index lists of RepDistiller, as one sorted array: slots ordered by
        class (`_by_class`), each class's first position (`_class_start`) and size
        (`_class_count`), and each slot's class (`_slot_class`). Non-persistent buffers:
        they follow `.to()` but are rebuilt from the dataset, not saved in checkpoints."""
        if labels is None:
            raise ValueError("negatives='other_class' needs the label of every training image (labels=...)")
        y = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).cpu()
        if y.numel() != self.n_data:
            raise ValueError(f"labels: {y.numel()} labels for {self.n_data} memory slots")
        if y.numel() and int(y.min()) < 0:
            raise ValueError("labels must be non-negative class indices")
        counts = torch.bincount(y)
        if int((counts > 0).sum()) < 2:
            raise ValueError("negatives='other_class' needs at least two classes in the training set")
        starts = torch.cumsum(counts, 0) - counts
        order = torch.argsort(y, stable=True)
        for name, value in (("_by_class", order), ("_class_start", starts), ("_class_count", counts),
                            ("_slot_class", y)):
            self.register_buffer(name, value.to(device) if device is not None else value, persistent=False)

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen.device != device:  # the module moved: same seed (as last reseeded), new device
            self._gen = torch.Generator(device=device).manual_seed(self._gen.initial_seed())
        return self._gen

    def sample(self, y: Tensor) -> Tensor:
        """`[B, K+1]` slot indices: column 0 the positive (`y`), then K negatives, from the
        other classes than slot `y`'s (`other_class`) or from every slot (`uniform`)."""
        gen = self._generator(y.device)
        if self.negatives == "uniform":
            idx = torch.randint(0, self.n_data, (y.shape[0], self.nce_k + 1), device=y.device, generator=gen)
            idx[:, 0] = y
            return idx
        # Number the other classes' slots 0..pool-1 in class order: below the anchor class's
        # first position they are positions r, above it r + count. A uniform r in [0, pool)
        # is then a uniform draw from the other classes (62-bit draw mod pool: bias < 2^-40).
        cls = self._slot_class[y]
        start, count = self._class_start[cls].unsqueeze(1), self._class_count[cls].unsqueeze(1)
        pool = self.n_data - count
        r = torch.randint(0, 2 ** 62, (y.shape[0], self.nce_k), device=y.device, generator=gen) % pool
        pos = torch.where(r >= start, r + count, r)
        return torch.cat([y.view(-1, 1), self._by_class[pos]], dim=1)

    # -- scoring -----------------------------------------------------------------------

    def _use_dense(self, batch: int) -> bool:
        if self.mode != "auto":
            return self.mode == "dense"
        return self.n_data <= 32 * (self.nce_k + 1)

    def _scores(self, v: Tensor, bank: Tensor, idx: Tensor, dense: bool) -> Tensor:
        if dense:
            return (v @ bank.t()).gather(1, idx)
        rows = bank.index_select(0, idx.reshape(-1)).view(idx.shape[0], idx.shape[1], -1)
        return torch.bmm(rows, v.unsqueeze(2)).squeeze(2)

    def log_scores(self, v1: Tensor, v2: Tensor, y: Tensor, contrast_idx: Tensor | None = None,
                   gather: Gather | None = None, update: bool = True) -> tuple[Tensor, Tensor]:
        """`(log P_v1, log P_v2)`, each `[B, K+1]` float32 with the positive in column 0,
        where `P = exp(<v, m> / T) / Z` is CRD's score.

        `v1`: student embeddings, scored against the target bank (`memory_v2`);
        `v2`: target embeddings, scored against the student bank (`memory_v1`).
        `contrast_idx` fixes the drawn slots (tests); `gather` collects a tensor from
        all DDP ranks (concatenated along dim 0) so every rank applies the same update
        and the same Z. Log space: the NCE loss then needs no exp/div/log passes over
        the B x (K+1) scores.
        """
        self.flush()
        with torch.autocast(v1.device.type, enabled=False):
            v1, v2 = v1.float(), v2.float()
            y = y.to(v1.device, torch.int64)
            idx = self.sample(y) if contrast_idx is None else contrast_idx.to(v1.device, torch.int64)
            dense = self._use_dense(v1.shape[0])
            inv_t = 1.0 / self.nce_t
            s1 = self._scores(v1, self.memory_v2, idx, dense) * inv_t
            s2 = self._scores(v2, self.memory_v1, idx, dense) * inv_t
            if not self._z_known:
                self._estimate_z(s1, s2, gather)
            log_z = torch.log(self.z)
            out_v1, out_v2 = s1 - log_z[0], s2 - log_z[1]
            if update:
                with torch.no_grad():
                    ys, a, b = y, v1.detach(), v2.detach()
                    if gather is not None:
                        ys, a, b = gather(ys), gather(a), gather(b)
                    self._pending = (ys, a, b)
        return out_v1, out_v2

    def forward(self, v1: Tensor, v2: Tensor, y: Tensor, contrast_idx: Tensor | None = None,
                gather: Gather | None = None, update: bool = True) -> tuple[Tensor, Tensor]:
        """CRD's interface: the scores `P = exp(<v, m> / T) / Z` themselves (see `log_scores`)."""
        l1, l2 = self.log_scores(v1, v2, y, contrast_idx, gather, update)
        return l1.exp(), l2.exp()

    @torch.no_grad()
    def _estimate_z(self, s1: Tensor, s2: Tensor, gather: Gather | None) -> None:
        """Z = n_data * mean(exp(<v, m> / T)) over the first batch, as CRD does."""
        if bool((self.z > 0).all()):  # restored from a checkpoint
            self._z_known = True
            return
        means = torch.stack([s1.detach().exp().mean(), s2.detach().exp().mean()])
        if gather is not None:
            means = gather(means.view(1, 2)).mean(0)
        self.z.copy_(means * self.n_data)
        self._z_known = True

    # -- memory update -------------------------------------------------------------------

    @torch.no_grad()
    def flush(self) -> None:
        """Write the last batch's momentum update into the banks (idempotent)."""
        if self._pending is None:
            return
        y, v1, v2 = self._pending
        self._pending = None
        for bank, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
            pos = bank.index_select(0, y).mul_(self.momentum).add_(v.to(bank.dtype), alpha=1.0 - self.momentum)
            bank.index_copy_(0, y, F.normalize(pos, dim=1))

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        self.flush()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._pending = None  # an update from before the load does not belong to the loaded bank
        self._z_known = False
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"feat_dim={self.feat_dim}, n_data={self.n_data}, nce_k={self.nce_k}, nce_t={self.nce_t}, "
                f"momentum={self.momentum}, mode={self.mode}, negatives={self.negatives}")


class ContrastLoss(nn.Module):
    """CRD's NCE loss on `[B, K+1]` scores P (positive in column 0), noise distribution 1/n_data:
    `-(sum log(P+ / (P+ + K/N)) + sum log((K/N) / (P- + K/N))) / B` (the reference, with its eps)."""

    def __init__(self, n_data: int) -> None:
        super().__init__()
        self.n_data = int(n_data)

    def forward(self, x: Tensor) -> Tensor:
        bsz, m = x.shape[0], x.shape[1] - 1
        m_pn = m / float(self.n_data)
        p_pos = x[:, 0]
        log_d1 = torch.log(p_pos / (p_pos + m_pn + _EPS))
        p_neg = x[:, 1:]
        log_d0 = torch.log(m_pn / (p_neg + m_pn + _EPS))
        return -(log_d1.sum() + log_d0.sum()) / bsz


def nce_loss_from_log(log_p: Tensor, n_data: int) -> Tensor:
    """`ContrastLoss` from log P, without its eps (1e-7 next to K/N): with u = log P - log(K/N),
    log(P / (P + K/N)) = logsigmoid(u) and log((K/N) / (P + K/N)) = logsigmoid(-u).
    The sign is applied by one broadcast multiply-add (+1 for the positive column, -1 for
    the negatives), so the B x (K+1) scores see two fused passes instead of seven, no
    slicing copies in backward, and no overflow for confident scores."""
    bsz, cols = log_p.shape
    log_c = math.log((cols - 1) / float(n_data))
    sign = torch.full((1, cols), -1.0, dtype=log_p.dtype, device=log_p.device)
    sign[0, 0] = 1.0
    u = torch.addcmul(sign * -log_c, log_p, sign)  # sign * (log P - log c)
    return -F.logsigmoid(u).sum() / bsz


class CRDCriterion(nn.Module):
    """Memory bank + the two NCE losses (student side and target side), summed as in CRD."""

    def __init__(self, feat_dim: int, n_data: int, nce_k: int, nce_t: float, momentum: float,
                 device: torch.device | str | None = None, seed: int = 0, labels: Tensor | Any | None = None,
                 negatives: str = "uniform") -> None:
        super().__init__()
        self.memory = ContrastMemory(feat_dim, n_data, nce_k, nce_t, momentum, device=device, seed=seed,
                                     labels=labels, negatives=negatives)
        self.n_data = int(n_data)

    def forward(self, student_emb: Tensor, target_emb: Tensor, indices: Tensor,
                contrast_idx: Tensor | None = None, gather: Gather | None = None) -> Tensor:
        log_s, log_t = self.memory.log_scores(student_emb, target_emb, indices, contrast_idx=contrast_idx,
                                              gather=gather)
        return nce_loss_from_log(log_s, self.n_data) + nce_loss_from_log(log_t, self.n_data)
