"""Embedded class names and dataset-name handling."""

from __future__ import annotations

import pytest

from richkd_deploy.data import DATASETS, build_dataset, canonical_name, class_names
from richkd_deploy.errors import DataError


def test_counts_and_known_entries() -> None:
    c100, c10, fm = class_names("cifar100"), class_names("cifar10"), class_names("fashion-mnist")
    assert (len(c100), len(c10), len(fm)) == (100, 10, 10)
    assert len(set(c100)) == 100 and c100 == sorted(c100)  # torchvision's order is alphabetical
    assert c100[0] == "apple" and c100[1] == "aquarium_fish" and c100[-1] == "worm"
    assert "maple_tree" in c100 and "sweet_pepper" in c100
    assert c10[0] == "airplane" and c10[9] == "truck"
    assert fm[0] == "T-shirt/top" and fm[9] == "Ankle boot"
    assert class_names("synthetic")[3] == "class 3"


def test_returns_a_copy() -> None:
    names = class_names("cifar10")
    names[0] = "changed"
    assert class_names("cifar10")[0] == "airplane"


def test_aliases_and_unknown_names() -> None:
    assert canonical_name("CIFAR-100") == "cifar100"
    assert canonical_name("fashion_mnist") == "fashion-mnist"
    assert set(DATASETS) == {"cifar10", "cifar100", "fashion-mnist", "imagefolder", "synthetic"}
    with pytest.raises(DataError, match="did you mean 'cifar100'"):
        canonical_name("cifar1000")
    with pytest.raises(DataError, match="choose one of"):
        build_dataset("mnist-digits-xyz", "train")


def test_imagefolder_has_no_fixed_names() -> None:
    with pytest.raises(DataError, match=r"\.classes"):
        class_names("imagefolder")
