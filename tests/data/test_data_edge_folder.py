"""Image folders at edge resolution: mixed sizes and modes, the bad files real folders
hold, the ImageNet train/eval transforms, and loading through DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from richkd_deploy.data import build_dataset, make_loader
from richkd_deploy.data.imagefolder import decode_rgb, scan_files
from richkd_deploy.data.transforms import EvalTransform, RandomResizedCropTransform, train_transform
from richkd_deploy.errors import DataError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _jpeg(path: Path, size: tuple[int, int], value: int = 120, mode: str = "RGB") -> None:
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    arr[: size[1] // 2] = 255 - value
    Image.fromarray(arr).convert(mode).save(path, quality=90)


def _good_and_bad(root: Path) -> dict[str, Path]:
    """train/{a,b}: mixed sizes and modes that must decode, plus the bad files."""
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "b").mkdir(parents=True)
    (root / "val" / "a").mkdir(parents=True)
    (root / "val" / "b").mkdir(parents=True)
    for k, size in enumerate([(250, 250), (320, 180), (90, 400)]):
        _jpeg(root / "train" / "a" / f"rgb{k}.jpg", size, 60 + k)
        _jpeg(root / "train" / "b" / f"rgb{k}.jpg", size, 180 + k)
        _jpeg(root / "val" / "a" / f"v{k}.jpg", size, 60)
        _jpeg(root / "val" / "b" / f"v{k}.jpg", size, 180)
    good = {
        "cmyk": root / "train" / "a" / "cmyk.jpg",
        "png16": root / "train" / "a" / "grey16.png",
        "rgba": root / "train" / "b" / "rgba.png",
        "palette": root / "train" / "b" / "palette.png",
    }
    _jpeg(good["cmyk"], (64, 48), 100, mode="CMYK")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(good["png16"])  # 16-bit grey, 61% bright
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(good["rgba"])
    Image.fromarray(np.full((30, 30, 3), 90, dtype=np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        good["palette"])
    bad = {
        "empty": root / "train" / "a" / "empty.jpg",
        "text": root / "train" / "b" / "readme.png",
        "truncated": root / "train" / "b" / "cut.jpg",
    }
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not a picture\n")
    _jpeg(root / "tmp_full.jpg", (300, 300), 77)
    full = (root / "tmp_full.jpg").read_bytes()
    bad["truncated"].write_bytes(full[: len(full) // 2])
    (root / "tmp_full.jpg").unlink()
    return {**{f"good:{k}": v for k, v in good.items()}, **{f"bad:{k}": v for k, v in bad.items()}}


def test_modes_decode_to_the_right_pixels(tmp_path: Path) -> None:
    files = _good_and_bad(tmp_path)
    grey16 = decode_rgb(files["good:png16"])
    assert grey16.dtype == np.uint8 and grey16.shape == (40, 40, 3)
    assert int(grey16[0, 0, 0]) == round(40000 / 257)  # scaled, not clipped to 255 as PIL's convert does
    assert decode_rgb(files["good:cmyk"]).shape == (48, 64, 3)
    assert decode_rgb(files["good:rgba"])[0, 0].tolist() == [200, 0, 0]
    assert decode_rgb(files["good:palette"])[0, 0].tolist() == [90, 90, 90]


def test_scan_finds_each_bad_file_and_only_those(tmp_path: Path) -> None:
    files = _good_and_bad(tmp_path)
    paths = sorted(p for p in (tmp_path / "train").rglob("*") if p.is_file())
    bad = scan_files(paths)
    assert set(bad) == {files["bad:empty"], files["bad:text"], files["bad:truncated"]}
    assert bad[files["bad:empty"]] == "empty file"
    assert "truncated JPEG" in bad[files["bad:truncated"]]


def test_bad_files_refused_before_training_or_skipped_and_reported_once(tmp_path: Path, caplog) -> None:
    files = _good_and_bad(tmp_path)
    with pytest.raises(DataError, match=r"3 unreadable image file\(s\).*data.bad_files: skip") as info:
        build_dataset("imagefolder", "train", root=tmp_path)
    assert "\n" not in str(info.value)
    with caplog.at_level("WARNING"):
        ds = build_dataset("imagefolder", "train", root=tmp_path, bad_files="skip")
    assert len(ds) == 10
    reported = [r.getMessage() for r in caplog.records]
    for key in ("bad:empty", "bad:text", "bad:truncated"):
        assert sum(str(files[key]) in m for m in reported) == 1


def test_a_file_that_breaks_mid_epoch_is_replaced_and_reported_once(tmp_path: Path, caplog) -> None:
    _good_and_bad(tmp_path)
    ds = build_dataset("imagefolder", "train", root=tmp_path, bad_files="skip")
    victim = ds.paths[3]
    victim.write_bytes(victim.read_bytes()[:200])  # damaged after the scan
    ds = ds.with_transform(EvalTransform(32, MEAN, STD))
    with caplog.at_level("WARNING"):
        for _ in range(2):  # two epochs
            for images, _labels, _idx in make_loader(ds, batch_size=4, shuffle=True, num_workers=0, seed=0):
                assert torch.isfinite(images).all()
    assert sum(str(victim) in r.getMessage() for r in caplog.records) == 1
    strict = ds.with_transform(None)
    strict.bad_files = "error"
    with pytest.raises(DataError, match="cannot read image .*data.bad_files: skip"):
        strict[3]


def test_random_resized_crop_matches_torchvision_geometry() -> None:
    """Same crop-box distribution as torchvision.transforms.RandomResizedCrop.get_params
    under the same seed (same algorithm, same draws)."""
    import torchvision.transforms as T

    ours = RandomResizedCropTransform(224, MEAN, STD)
    img = Image.new("RGB", (320, 180))
    for seed in range(20):
        torch.manual_seed(seed)
        box = ours.box(180, 320)
        torch.manual_seed(seed)
        assert box == tuple(T.RandomResizedCrop.get_params(img, ours.scale, ours.ratio))
    out = ours(np.zeros((180, 320, 3), dtype=np.uint8))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32


def test_eval_centre_crop_selects_torchvisions_region() -> None:
    """Resize(256) + CenterCrop(224) (torchvision) vs our crop-then-resize at ratio 0.875:
    the same region, so a smooth image gives nearly the same pixels."""
    import torchvision.transforms as T

    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], axis=2).astype(np.uint8)
    ours = EvalTransform(224, (0, 0, 0), (1, 1, 1), crop_ratio=0.875).prepare_uint8(img)
    ref = np.asarray(T.CenterCrop(224)(T.Resize(256)(Image.fromarray(img))))
    assert ours.shape == ref.shape == (224, 224, 3)
    assert np.abs(ours.astype(int) - ref.astype(int)).mean() < 1.5
    squash = EvalTransform(224, (0, 0, 0), (1, 1, 1)).prepare_uint8(img)  # null ratio: the whole image
    assert squash[0, -1, 0] > 250 and ours[0, -1, 0] < 240


def test_loader_streams_224px_batches_through_workers(tmp_path: Path) -> None:
    _good_and_bad(tmp_path)
    ds = build_dataset("imagefolder", "train", root=tmp_path, bad_files="skip")
    ds = ds.with_transform(train_transform(224, MEAN, STD, crop="random_resized"))
    batches = list(make_loader(ds, batch_size=4, shuffle=True, num_workers=2, seed=3))
    again = list(make_loader(ds, batch_size=4, shuffle=True, num_workers=0, seed=3))
    assert [b[0].shape for b in batches] == [(4, 3, 224, 224), (4, 3, 224, 224), (2, 3, 224, 224)]
    for (a, _, ia), (b, _, ib) in zip(batches, again, strict=True):  # same augmentation with or without workers
        assert torch.equal(ia, ib) and torch.equal(a, b)


def test_uint8_batch_uses_the_eval_crop(tmp_path: Path) -> None:
    """validate corrupts `uint8_batch`, so it must be the image the eval transform shows."""
    _good_and_bad(tmp_path)
    ds = build_dataset("imagefolder", "test", root=tmp_path).with_transform(
        EvalTransform(64, MEAN, STD, crop_ratio=0.875))
    u8 = ds.uint8_batch([0, 1, 2], size=64)
    ref = torch.stack([ds[i][0] for i in range(3)])
    from richkd_deploy.data.transforms import normalize_batch

    torch.testing.assert_close(normalize_batch(u8, MEAN, STD), ref)


def test_imagenet_layout_gets_category_names(tmp_path: Path) -> None:
    """torchvision's ImageNet layout: 1000 wnid folders; CLIP must read 'tench', not 'n01440764'."""
    from torchvision.models import ResNet18_Weights

    from richkd_deploy.data.imagefolder import class_display_names

    wnids = [f"n{i:08d}" for i in range(1000)]
    names = class_display_names(wnids)
    assert names[0] == "tench" and len(set(names)) == 1000
    assert names[:10] == ResNet18_Weights.IMAGENET1K_V1.meta["categories"][:10]
    assert class_display_names(["ok", "scratch"]) == ["ok", "scratch"]
    for split in ("train", "val"):
        for w in ("n01440764", "n01443537"):
            (tmp_path / split / w).mkdir(parents=True)
            _jpeg(tmp_path / split / w / "x.JPEG", (40, 30))
    assert build_dataset("imagefolder", "test", root=tmp_path).classes == ["n01440764", "n01443537"]  # not 1000
