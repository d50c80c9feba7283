"""CRD memory, NCE loss and momentum update against a numpy computation; DDP-style gather."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from richkd_deploy.distill.crd import ContrastMemory, CRDCriterion, Embed

N, D, K, B, T, MOM = 6, 4, 3, 2, 0.07, 0.5
IDX = torch.tensor([[1, 0, 3, 5], [4, 2, 2, 0]])
Y = torch.tensor([1, 4])


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(B, D, generator=g), dim=1), F.normalize(torch.randn(B, D, generator=g), dim=1))


def _numpy_crd(m1: np.ndarray, m2: np.ndarray, v1: np.ndarray, v2: np.ndarray, idx: np.ndarray) -> float:
    """CRD by hand: scores, Z from this batch, NCE for both views."""
    eps, m_pn = 1e-7, K / N
    total = 0.0
    for v, bank in ((v1, m2), (v2, m1)):
        out = np.exp(np.einsum("bkd,bd->bk", bank[idx], v) / T)
        p = out / (out.mean() * N)
        log_d1 = np.log(p[:, 0] / (p[:, 0] + m_pn + eps))
        log_d0 = np.log(m_pn / (p[:, 1:] + m_pn + eps))
        total += -(log_d1.sum() + log_d0.sum()) / B
    return total


def test_memory_init_like_crd():
    mem = ContrastMemory(128, 1000, 16, seed=3)
    stdv = 1 / np.sqrt(128 / 3)
    assert mem.memory_v1.abs().max() <= stdv and mem.memory_v1.abs().max() > 0.9 * stdv
    assert not torch.equal(mem.memory_v1, mem.memory_v2)
    assert torch.equal(ContrastMemory(128, 1000, 16, seed=3).memory_v2, mem.memory_v2)  # same on every rank
    assert mem.z.tolist() == [-1.0, -1.0]


@pytest.mark.parametrize("mode", ["dense", "gather"])
def test_crd_loss_matches_numpy(mode):
    crit = CRDCriterion(D, N, K, T, MOM, seed=0)
    crit.memory.mode = mode
    m1, m2 = crit.memory.memory_v1.double().numpy().copy(), crit.memory.memory_v2.double().numpy().copy()
    v1, v2 = _inputs()
    loss = crit(v1, v2, Y, contrast_idx=IDX)
    expected = _numpy_crd(m1, m2, v1.double().numpy(), v2.double().numpy(), IDX.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Z was estimated on this first batch and is now fixed
    z = crit.memory.z.clone()
    assert (z > 0).all()
    crit(v1, v2, Y, contrast_idx=IDX)
    assert torch.equal(crit.memory.z, z)


def test_dense_and_gather_paths_agree_with_gradients():
    outs, grads = [], []
    for mode in ("dense", "gather"):
        mem = ContrastMemory(D, N, K, T, MOM, seed=0, mode=mode)
        v1, v2 = (v.clone().requires_grad_(True) for v in _inputs())
        o1, o2 = mem(v1, v2, Y, contrast_idx=IDX)
        (o1.log().sum() + 2 * o2.log().sum()).backward()
        outs.append((o1.detach(), o2.detach()))
        grads.append((v1.grad, v2.grad))
    for a, b in zip(outs[0] + grads[0], outs[1] + grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_momentum_update_math_and_deferral():
    mem = ContrastMemory(D, N, K, T, MOM, seed=0)
    old1, old2 = mem.memory_v1.clone(), mem.memory_v2.clone()
    v1, v2 = _inputs()
    mem(v1, v2, Y, contrast_idx=IDX)
    assert torch.equal(mem.memory_v1, old1)  # written at the next forward / state_dict / flush
    sd = mem.state_dict()
    for bank, old, v in ((mem.memory_v1, old1, v1), (mem.memory_v2, old2, v2)):
        expected = old.clone()
        for b, slot in enumerate(Y.tolist()):
            mixed = MOM * old[slot] + (1 - MOM) * v[b]
            expected[slot] = mixed / mixed.norm()
        torch.testing.assert_close(bank, expected)
    torch.testing.assert_close(sd["memory_v1"], mem.memory_v1)
    untouched = [i for i in range(N) if i not in Y.tolist()]
    assert torch.equal(mem.memory_v1[untouched], old1[untouched])


def test_gradients_reach_inputs_not_memory():
    crit = CRDCriterion(D, N, K, T, MOM)
    emb = Embed(6, D)
    x = torch.randn(B, 6)
    v2 = _inputs()[1]
    loss = crit(emb(x), v2, Y)
    loss.backward()
    assert emb.linear.weight.grad is not None and emb.linear.weight.grad.abs().sum() > 0
    assert not any(b.requires_grad for b in crit.buffers())
    loss2 = crit(emb(x), v2, Y)  # the deferred in-place update does not break the next step
    loss2.backward()


def test_resume_restores_banks_and_z():
    a = CRDCriterion(D, N, K, T, MOM, seed=0)
    v1, v2 = _inputs()
    a(v1, v2, Y, contrast_idx=IDX)
    b = CRDCriterion(D, N, K, T, MOM, seed=99)
    b.load_state_dict(a.state_dict())
    for name in ("memory_v1", "memory_v2", "z"):
        assert torch.equal(getattr(a.memory, name), getattr(b.memory, name))
    la = a(v2, v1, Y, contrast_idx=IDX)
    lb = b(v2, v1, Y, contrast_idx=IDX)
    torch.testing.assert_close(la, lb)
    assert torch.equal(a.memory.z, b.memory.z)


def test_sampled_negatives_are_uniform_with_positive_first():
    mem = ContrastMemory(D, 50, 4000, T, MOM, seed=0)
    idx = mem.sample(torch.tensor([7, 9]))
    assert idx.shape == (2, 4001) and idx[:, 0].tolist() == [7, 9]
    counts = torch.bincount(idx[:, 1:].reshape(-1), minlength=50).float()
    assert counts.min() > 0.6 * counts.mean()


def _class_labels(n: int = 60, classes: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, classes, (n,), generator=g)


def test_other_class_negatives_never_share_the_anchor_class():
    """RepDistiller's `cls_negative` lists: every other-class slot can be drawn, none of the
    anchor's class (so never the positive), roughly uniformly."""
    labels = _class_labels()
    mem = ContrastMemory(D, 60, 6000, T, MOM, seed=0, labels=labels, negatives="other_class")
    anchors = torch.arange(60)
    idx = mem.sample(anchors)
    assert idx.shape == (60, 6001) and torch.equal(idx[:, 0], anchors)
    neg = idx[:, 1:]
    assert (labels[neg] != labels[anchors].unsqueeze(1)).all()
    assert not (neg == anchors.unsqueeze(1)).any()
    for a in (0, 17, 59):
        allowed = (labels != labels[a]).nonzero().view(-1)
        counts = torch.bincount(neg[a], minlength=60)[allowed].float()
        assert (counts > 0).all() and counts.min() > 0.5 * counts.mean()  # all reachable, about uniform
    # labels follow .to() but are not saved: checkpoints keep their keys
    assert set(mem.state_dict()) == {"memory_v1", "memory_v2", "z"}


def test_uniform_negatives_include_same_class_and_positive():
    labels = _class_labels()
    mem = ContrastMemory(D, 60, 6000, T, MOM, seed=0, labels=labels, negatives="uniform")
    anchors = torch.arange(60)
    neg = mem.sample(anchors)[:, 1:]
    assert (labels[neg] == labels[anchors].unsqueeze(1)).any()
    assert (neg == anchors.unsqueeze(1)).any(1).all()


def test_other_class_sampling_is_seeded_per_rank_stream():
    labels = _class_labels()
    a = ContrastMemory(D, 60, 50, T, MOM, seed=3, labels=labels, negatives="other_class")
    b = ContrastMemory(D, 60, 50, T, MOM, seed=3, labels=labels, negatives="other_class")
    c = ContrastMemory(D, 60, 50, T, MOM, seed=4, labels=labels, negatives="other_class")
    y = torch.tensor([1, 2, 3])
    sa = a.sample(y)
    assert torch.equal(sa, b.sample(y)) and not torch.equal(sa, c.sample(y))


def test_other_class_memory_rejects_bad_labels():
    with pytest.raises(ValueError, match="needs the label"):
        ContrastMemory(D, 60, 5, negatives="other_class")
    with pytest.raises(ValueError, match="59 labels for 60"):
        ContrastMemory(D, 60, 5, labels=torch.arange(59) % 3, negatives="other_class")
    with pytest.raises(ValueError, match="two classes"):
        ContrastMemory(D, 60, 5, labels=torch.full((60,), 2), negatives="other_class")
    with pytest.raises(ValueError, match="negatives must be"):
        ContrastMemory(D, 60, 5, negatives="same_class")


def test_gather_keeps_every_rank_bank_identical():
    """Two 'ranks' in threads with an all_gather built from a barrier."""
    world = 2
    barrier = threading.Barrier(world)
    slots: list[torch.Tensor | None] = [None] * world

    def make_gather(rank: int):
        def gather(t: torch.Tensor) -> torch.Tensor:
            slots[rank] = t.detach().clone()
            barrier.wait()
            out = torch.cat([s for s in slots])  # type: ignore[misc]
            barrier.wait()
            return out
        return gather

    crits = [CRDCriterion(D, N, K, T, MOM, seed=0) for _ in range(world)]
    ys = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    inputs = [_inputs(1), _inputs(2)]
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            for _ in range(2):
                crits[rank](*inputs[rank], ys[rank], gather=make_gather(rank))
            crits[rank].memory.flush()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not errors
    a, b = crits[0].memory, crits[1].memory
    assert torch.equal(a.memory_v1, b.memory_v1) and torch.equal(a.memory_v2, b.memory_v2)
    assert torch.equal(a.z, b.z)
    fresh = ContrastMemory(D, N, K, T, MOM, seed=0)
    changed = (a.memory_v1 != fresh.memory_v1).any(1).nonzero().view(-1).tolist()
    assert changed == [0, 1, 2, 3]  # both ranks' slots were updated on both ranks


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crd_on_cuda_matches_cpu_under_autocast():
    cpu = CRDCriterion(D, N, K, T, MOM, seed=0)
    gpu = CRDCriterion(D, N, K, T, MOM, seed=0, device="cuda")
    v1, v2 = _inputs()
    with torch.autocast("cuda", dtype=torch.float16):
        lg = gpu(v1.cuda().half(), v2.cuda().half(), Y.cuda(), contrast_idx=IDX.cuda())
    lc = cpu(v1.half().float(), v2.half().float(), Y, contrast_idx=IDX)
    assert lg.dtype == torch.float32 and torch.isfinite(lg)
    assert lg.item() == pytest.approx(lc.item(), rel=1e-4)
    gpu(v1.cuda(), v2.cuda(), Y.cuda())  # sampling with a CUDA generator
    labels = _class_labels(N, 3)
    mem = ContrastMemory(D, N, 500, T, MOM, seed=0, labels=labels, negatives="other_class").cuda()
    idx = mem.sample(Y.cuda()).cpu()
    assert (labels[idx[:, 1:]] != labels[Y].unsqueeze(1)).all() and idx[:, 0].tolist() == Y.tolist()


def test_log_space_nce_equals_crd_contrast_loss():
    from richkd_deploy.distill.crd import ContrastLoss, nce_loss_from_log

    g = torch.Generator().manual_seed(0)
    log_p = torch.randn(5, 17, generator=g, dtype=torch.float64) * 3 - 2
    ref = ContrastLoss(100)(log_p.exp())
    assert nce_loss_from_log(log_p, 100).item() == pytest.approx(ref.item(), rel=1e-6)
    mem = ContrastMemory(D, N, K, T, MOM, seed=0)
    p1, p2 = mem(*_inputs(), Y, contrast_idx=IDX, update=False)  # CRD's interface returns P itself
    assert (p1 > 0).all() and p1.shape == (B, K + 1)
