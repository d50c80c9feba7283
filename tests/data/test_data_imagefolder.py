"""An image-folder dataset built from generated PNG/JPEG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from richkd_deploy.data import ImageFolderIndexed, build_dataset, eval_transform, make_loader
from richkd_deploy.errors import DataError


def _tree(root: Path, test_name: str = "test", sizes: tuple[int, int] = (20, 20)) -> None:
    for split, n in (("train", 3), (test_name, 2)):
        for c, cls in enumerate(["zebra", "ant", "moth"]):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                size = sizes[k % 2]
                arr = np.full((size, size, 3), 40 * c + k, dtype=np.uint8)
                Image.fromarray(arr).save(d / f"img{k}.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "train" / "ant" / "grey.jpg")  # grey -> RGB
    (root / "train" / "ant" / "notes.txt").write_text("not an image")


def test_reads_split_folders(tmp_path: Path) -> None:
    _tree(tmp_path)
    train = build_dataset("imagefolder", "train", root=tmp_path)
    assert isinstance(train, ImageFolderIndexed)
    assert train.classes == ["ant", "moth", "zebra"] and train.num_classes == 3
    assert len(train) == 10 and train.class_counts().tolist() == [4, 3, 3]
    image, label, index = train[4]
    assert image.shape == (3, 20, 20) and image.dtype == torch.float32 and (label, index) == (1, 4)
    assert float(image.max()) <= 1.0
    raw = train.raw(1)
    assert raw.mode == "RGB" and raw.size == (20, 20)
    assert train.raw(0).size == (8, 8) and train.raw(0).mode == "RGB"  # ant/grey.jpg, converted
    test = build_dataset("imagefolder", "test", root=tmp_path)
    assert len(test) == 6 and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    batch = test.uint8_batch([5, 0])
    assert batch.shape == (2, 3, 20, 20) and batch.dtype == torch.uint8
    assert int(batch[0, 0, 0, 0]) == 1 and int(batch[1, 0, 0, 0]) == 40  # zebra/img1, ant/img0


def test_val_instead_of_test_and_mixed_sizes(tmp_path: Path) -> None:
    _tree(tmp_path, test_name="val", sizes=(20, 12))
    test = build_dataset("imagefolder", "test", root=tmp_path)
    with pytest.raises(DataError, match="differ in size"):
        test.uint8_batch([0, 1])
    assert test.uint8_batch([0, 1], size=16).shape == (2, 3, 16, 16)
    ds = test.with_transform(eval_transform(16, 0.5, 0.5))
    images, labels, indices = next(iter(make_loader(ds, 6, shuffle=False, num_workers=0, seed=0)))
    assert images.shape == (6, 3, 16, 16) and indices.tolist() == list(range(6))
    sub = ds.subset([5, 2])
    assert sub.labels.tolist() == [2, 1] and sub[1][2] == 1 and sub.transform is ds.transform
    assert sub.fingerprint() != ds.fingerprint()


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root"):
        build_dataset("imagefolder", "train", root=None)
    with pytest.raises(DataError, match="not a folder"):
        build_dataset("imagefolder", "train", root=tmp_path / "nope")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no test/ or val/"):
        build_dataset("imagefolder", "test", root=tmp_path)
    with pytest.raises(DataError, match="holds no images"):
        build_dataset("imagefolder", "train", root=tmp_path)
    (tmp_path / "test" / "dog").mkdir(parents=True)
    with pytest.raises(DataError, match="train/ lacks.*dog"):
        build_dataset("imagefolder", "test", root=tmp_path)


def test_unreadable_image(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "train" / "moth" / "img0.png").write_bytes(b"broken")
    # found before training (issue 14: never a crash mid-epoch), named with its path
    with pytest.raises(DataError, match=r"1 unreadable image file\(s\): .*moth/img0.png .*data.bad_files: skip"):
        build_dataset("imagefolder", "train", root=tmp_path)
    ds = build_dataset("imagefolder", "train", root=tmp_path, bad_files="skip")
    assert len(ds) == 9 and all(p.name != "img0.png" or p.parent.name != "moth" for p in ds.paths)
