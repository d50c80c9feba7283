"""The published settings as recipes: the RichKD authors' code (paper-cifar100), the published
KD baseline (kd-baseline-cifar100), and edge.yaml's deliberate departures from them."""

from __future__ import annotations

from richkd_deploy import recipe

SCHEDULE = (0.05, 0.9, 5e-4, 64, 240, (150, 180, 210), 0.1)
MDISTILLER_MEAN_STD = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def _schedule(r: recipe.Recipe) -> tuple:
    o = r.optim
    return (o.lr, o.momentum, o.weight_decay, o.batch_size, o.epochs, o.milestones, o.gamma)


def test_paper_recipe_is_the_authors_code(repo):
    r = recipe.load(repo / "recipes" / "paper-cifar100.yaml")
    d = r.distill
    assert (d.method, d.w_logit, d.w_feat, d.w_ce, d.temperature, d.alpha, d.lam) == ("richkd_lf", 3, 0.8, 1, 3, 0.7, 0.7)
    assert (d.feat_dim, d.nce_k, d.nce_t, d.nce_momentum, d.crd_negatives) == (128, 16384, 0.07, 0.5, "other_class")
    assert _schedule(r) == SCHEDULE and r.optim.amp is False
    # their cache.py: raw cosine, dataset.classes as stored, once per unaugmented image
    assert (r.clip.model, r.clip.pretrained, r.clip.logit_scale, r.clip.class_name_format, r.clip.targets) == (
        "ViT-L-14", "openai", 1.0, "raw", "cached")
    assert r.data.holdout_fraction == 0.0 and (r.data.mean, r.data.std) == MDISTILLER_MEAN_STD
    assert (r.teacher.arch, r.student.arch, r.data.dataset) == ("resnet32x4", "resnet8x4", "cifar100")
    assert r.teacher.checkpoint_member == "resnet32x4_vanilla/ckpt_epoch_240.pth"


def test_kd_baseline_recipe_has_the_published_kd_settings(repo):
    r = recipe.load(repo / "recipes" / "kd-baseline-cifar100.yaml")
    d = r.distill
    assert (d.method, d.temperature, d.w_ce, d.w_logit) == ("kd", 4.0, 0.1, 0.9)
    assert not r.needs_clip and _schedule(r) == SCHEDULE
    paper = recipe.load(repo / "recipes" / "paper-cifar100.yaml")
    assert (r.data, r.teacher, r.student, r.optim) == (paper.data, paper.teacher, paper.student, paper.optim)


def test_edge_departs_from_the_paper_only_where_the_readme_says(repo):
    edge = recipe.load(repo / "recipes" / "edge.yaml").to_dict()
    paper = recipe.load(repo / "recipes" / "paper-cifar100.yaml").to_dict()
    diffs = set()
    for section, values in paper.items():
        if isinstance(values, dict):
            diffs |= {f"{section}.{k}" for k, v in values.items() if edge[section][k] != v}
        elif section not in ("name", "source") and edge[section] != values:
            diffs.add(section)
    # each of these is a row of the README's "edge.yaml vs paper-cifar100.yaml" table
    assert diffs == {"data.holdout_fraction", "data.mean", "data.std", "clip.class_name_format", "clip.logit_scale",
                     "optim.amp"}
    readme = (repo / "README.md").read_text()
    for key in diffs:
        assert f"`{key}`" in readme, key


def test_demo_recipe_spends_its_time_on_teacher_and_student(repo):
    """The offline demo: the tiny random CLIP (seconds), explicitly allowed, all 54,000 images."""
    r = recipe.load(repo / "recipes" / "demo.yaml")
    assert (r.clip.model, r.clip.pretrained, r.clip.allow_random) == ("tiny-ViT", "none", True)
    assert r.data.dataset == "fashion-mnist" and r.data.train_limit is None
    assert r.teacher.checkpoint is None and r.needs_teacher and r.needs_clip
    script = (repo / "scripts" / "demo.sh").read_text()
    assert "recipes/demo.yaml" in script and "clip_pretrained" in script
