"""ImageNet-C layout (<source>/<name>/<severity>/<class>/<image>) for validate.corruptions.source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from richkd_deploy.errors import DataError
from richkd_deploy.evaluate import corruptions as corr

CLASSES = ["n01440764", "n01443537", "n01484850"]


def _write_imagenet_c(root, name="fog", side=40, per_class=3):
    """Each image's pixels hold 10*severity + class index, so a test can read back both."""
    for s in range(1, 6):
        for label, wnid in enumerate(reversed(CLASSES)):  # folder creation order must not matter
            label = CLASSES.index(wnid)
            d = root / name / str(s) / wnid
            d.mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(np.full((side, side, 3), 10 * s + label, np.uint8)).save(d / f"img{k}.png")


def test_folder_cell_is_labelled_by_the_model_class_list(tmp_path):
    _write_imagenet_c(tmp_path)
    x, y = corr.load_published(tmp_path, "fog", 4, classes=CLASSES)
    assert x.shape == (9, 3, 40, 40) and x.dtype == torch.uint8
    assert y.dtype == np.int64 and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # the pixel value encodes (severity, class): the label must be the class of its own image
    assert [int(img[0, 0, 0]) for img in x] == [40 + int(c) for c in y]


def test_folder_cell_subsample_covers_every_class_and_resizes(tmp_path):
    _write_imagenet_c(tmp_path)
    x, y = corr.load_published(tmp_path, "fog", 2, n=3, classes=CLASSES, size=32)
    assert x.shape == (3, 3, 32, 32) and sorted(y.tolist()) == [0, 1, 2]
    assert [int(img.float().mean().round()) for img in x] == [20 + int(c) for c in y]  # a flat image stays flat


def test_folder_layout_errors_say_what_to_fix(tmp_path):
    _write_imagenet_c(tmp_path)
    with pytest.raises(DataError, match="class list"):
        corr.load_published(tmp_path, "fog", 1)
    with pytest.raises(DataError, match="not one of the model's 2 classes"):
        corr.load_published(tmp_path, "fog", 1, classes=CLASSES[:2])
    (tmp_path / "fog" / "3" / CLASSES[0] / "img0.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="not a readable image"):
        corr.load_published(tmp_path, "fog", 3, classes=CLASSES)
    with pytest.raises(DataError, match="CIFAR-10-C layout"):
        corr.load_published(tmp_path, "snow", 1, classes=CLASSES)
