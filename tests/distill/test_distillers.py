"""Every distiller: forward/backward, which terms exist, what is trainable, what is saved."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from richkd_deploy.distill.distillers import create_distiller, list_distillers, term_names
from richkd_deploy.errors import RecipeError
from richkd_deploy.recipe import DISTILL_METHODS, DistillConfig
from tests.fakes import TinyNet

CFG = DistillConfig(nce_k=8, feat_dim=16)
EXPECTED = {"vanilla": ["ce"], "kd": ["ce", "kd"], "crd": ["ce", "crd"], "richkd_l": ["ce", "kd"],
            "richkd_f": ["ce", "crd"], "richkd_lf": ["ce", "kd", "crd"]}


def _batch(ds, idx):
    items = [ds[i] for i in idx]
    return (torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items]),
            torch.tensor([i for _, _, i in items]))


def _make(method, clip, cfg=CFG, n=24):
    torch.manual_seed(0)
    return create_distiller(method, dataclasses.replace(cfg, method=method), TinyNet(8), TinyNet(12), clip, n, "cpu",
                            train_labels=torch.arange(n) % 4)  # FakeDataset's labels


def test_registry_covers_recipe_methods():
    assert sorted(list_distillers()) == sorted(DISTILL_METHODS)
    for method in DISTILL_METHODS:
        assert term_names(method, CFG) == EXPECTED[method]


@pytest.mark.parametrize("targets", ["cached", "online"])
@pytest.mark.parametrize("method", DISTILL_METHODS)
def test_forward_backward_every_method(clip_sources, method, targets):
    ds, sources = clip_sources
    clip = sources[targets]
    d = _make(method, clip)
    d.train()
    images, labels, indices = _batch(ds, [3, 7, 11, 20, 0, 5])
    logits, terms = d(images, labels, indices)
    assert logits.shape == (6, 4) and list(terms) == EXPECTED[method]
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in d.student.parameters())
    teacher = d.teacher
    if method == "vanilla":
        assert teacher is None
    else:
        assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    clip_model = getattr(clip, "model", None)
    if clip_model is not None:
        assert all(p.grad is None for p in clip_model.parameters())
    assert not any(b.requires_grad for b in d.buffers())
    trainable = {id(p) for p in d.trainable_parameters()}
    assert {id(p) for p in d.student.parameters()} <= trainable
    if "crd" in terms:
        embeds = ["embed_s", "embed_t"] + (["embed_c"] if method.startswith("richkd") else [])
        for name in embeds:
            assert getattr(d, name).linear.weight.grad is not None
            assert {id(p) for p in getattr(d, name).parameters()} <= trainable
    keys = d.state_dict().keys()
    assert all(k.startswith(("student.", "embed_", "crd.")) for k in keys)
    assert ("crd.memory.memory_v1" in keys) == ("crd" in terms)
    assert len(trainable) == len(list(d.parameters()))


def test_zero_weights_allocate_nothing(clip_sources):
    _, sources = clip_sources
    d = _make("richkd_lf", sources["cached"], dataclasses.replace(CFG, w_feat=0.0))
    assert d.term_names == ["ce", "kd"]
    assert not hasattr(d, "crd") and not hasattr(d, "embed_c")
    assert all(name.startswith("student.") for name, _ in d.named_buffers())
    assert all(k.startswith("student.") for k in d.state_dict())
    d = _make("richkd_lf", sources["cached"], dataclasses.replace(CFG, w_logit=0.0, w_ce=0.0))
    assert d.term_names == ["crd"]
    with pytest.raises(RecipeError, match="every loss weight"):
        _make("kd", None, dataclasses.replace(CFG, w_ce=0.0, w_logit=0.0))
    d = _make("richkd_l", None, dataclasses.replace(CFG, w_logit=0.0))  # no CLIP term -> CLIP not needed
    assert d.clip_targets is None


def test_missing_parts_are_recipe_errors(clip_sources):
    _, sources = clip_sources
    with pytest.raises(RecipeError, match="needs CLIP"):
        _make("richkd_l", None)
    with pytest.raises(RecipeError, match="needs a teacher"):
        create_distiller("kd", CFG, TinyNet(), None, None, 24)
    with pytest.raises(RecipeError, match="classes"):
        create_distiller("kd", CFG, TinyNet(num_classes=4), TinyNet(num_classes=5), None, 24)
    with pytest.raises(RecipeError, match="unknown method"):
        term_names("richkd", CFG)


def test_teacher_stays_frozen_and_out_of_checkpoints(clip_sources):
    ds, sources = clip_sources
    d = _make("richkd_lf", sources["cached"])
    d.train()
    assert d.student.training and not d.teacher.training
    before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    images, labels, indices = _batch(ds, range(8))
    sum(d(images, labels, indices)[1].values()).backward()
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, before[k])  # BN running stats untouched: eval mode
    assert not any("teacher" in k or "clip" in k for k in d.state_dict())


def test_resume_from_state_dict_continues_identically(clip_sources):
    ds, sources = clip_sources
    a = _make("richkd_lf", sources["cached"])
    opt = torch.optim.SGD(a.trainable_parameters(), lr=0.1)
    images, labels, indices = _batch(ds, range(6))
    sum(a(images, labels, indices)[1].values()).backward()
    opt.step()
    state = a.state_dict()
    b = _make("richkd_lf", sources["cached"])
    b.teacher.load_state_dict(a.teacher.state_dict())
    b.load_state_dict(state)
    assert torch.equal(b.crd.memory.z, a.crd.memory.z) and (b.crd.memory.z > 0).all()
    a.eval(), b.eval()
    with torch.no_grad():
        la = a.student(images)[0]
        lb = b.student(images)[0]
    torch.testing.assert_close(la, lb)


def test_zoo_models_richkd_lf(clip_sources):
    models = pytest.importorskip("richkd_deploy.models")
    ds, sources = clip_sources
    torch.manual_seed(0)
    d = create_distiller("richkd_lf", CFG, models.create_model("resnet8", num_classes=4),
                         models.create_model("resnet20", num_classes=4), sources["cached"], len(ds), "cpu",
                         train_labels=ds.labels)
    images, labels, indices = _batch(ds, range(4))
    logits, terms = d(images, labels, indices)
    sum(terms.values()).backward()
    assert logits.shape == (4, 4) and list(terms) == ["ce", "kd", "crd"]
    assert d.embed_t.linear.in_features == d.teacher.num_features


@pytest.mark.parametrize("method", ["crd", "richkd_f", "richkd_lf"])
def test_crd_negatives_from_other_classes_by_default(clip_sources, method):
    """As RepDistiller/mdistiller/the authors: a CRD term's negatives never share the anchor's class."""
    ds, sources = clip_sources
    assert CFG.crd_negatives == "other_class"
    d = _make(method, sources["cached"], dataclasses.replace(CFG, nce_k=200))
    labels = torch.as_tensor(ds.labels)
    anchors = torch.tensor([3, 7, 11, 20, 0, 5])
    idx = d.crd.memory.sample(anchors)
    assert idx[:, 0].tolist() == anchors.tolist()
    assert (labels[idx[:, 1:]] != labels[anchors].unsqueeze(1)).all()
    images, lab, indices = _batch(ds, anchors.tolist())
    sum(d(images, lab, indices)[1].values()).backward()  # and the distiller trains with them


def test_crd_negatives_uniform_is_a_recipe_option(clip_sources):
    ds, sources = clip_sources
    cfg = dataclasses.replace(CFG, nce_k=400, crd_negatives="uniform")
    torch.manual_seed(0)
    d = create_distiller("crd", dataclasses.replace(cfg, method="crd"), TinyNet(8), TinyNet(12), None, 24, "cpu")
    labels = torch.as_tensor(ds.labels)
    idx = d.crd.memory.sample(torch.tensor([3, 7]))
    assert (labels[idx[:, 1:]] == labels[torch.tensor([3, 7])].unsqueeze(1)).any()  # same-class draws happen
    assert (idx[:, 1:] == idx[:, :1]).any()  # and the positive itself


def test_crd_other_class_needs_labels_and_two_classes():
    cfg = dataclasses.replace(CFG, method="crd")
    with pytest.raises(RecipeError, match="train_labels.*crd_negatives: uniform"):
        create_distiller("crd", cfg, TinyNet(8), TinyNet(12), None, 24, "cpu")
    with pytest.raises(RecipeError, match="24 training images"):
        create_distiller("crd", cfg, TinyNet(8), TinyNet(12), None, 24, "cpu", train_labels=torch.arange(10) % 4)
    with pytest.raises(RecipeError, match="two classes"):
        create_distiller("crd", cfg, TinyNet(8), TinyNet(12), None, 24, "cpu", train_labels=torch.zeros(24))
    # vanilla and KD have no CRD term: no labels needed
    create_distiller("kd", dataclasses.replace(CFG, method="kd"), TinyNet(8), TinyNet(12), None, 24, "cpu")
