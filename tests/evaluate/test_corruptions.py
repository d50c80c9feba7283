"""The batched corruptions: API contract, determinism, severity ordering, exact
pieces (glass shuffle schedule, motion taps), and reading published datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from richkd_deploy.errors import DataError
from richkd_deploy.evaluate import corruptions as corr
from richkd_deploy.evaluate.corruptions import _blur, _motion

ALL = corr.CORRUPTIONS + corr.EXTRA_CORRUPTIONS
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}
RANDOM = [n for n in ALL if n not in DETERMINISTIC]
# Severity steps (s -> s+1) where the mean change from the clean image may drop.
# The reference itself is not monotone there on these images (its parameters
# are not; test_corruption_fidelity checks the reference on the same images):
# glass_blur 1->2 and 3->4 (iterations 2, 1, 3, 2, 2), motion_blur 4->5 (longer
# blur runs off 32 px more often), frost 3->4 (blend 0.7/0.7 then 0.65/0.7), fog
# 3->4 (same strength, smoother haze), spatter 3->4 (water -> mud), saturate
# 2->3 (desaturate by 90 %, then saturate x2).
NON_MONOTONE = {("glass_blur", 1), ("glass_blur", 3), ("motion_blur", 4), ("frost", 3), ("fog", 3),
                ("spatter", 3), ("saturate", 2)}
# few random features per image (textures, drops): average a few seeds before ordering
NOISY = ("frost", "spatter")


def synthetic_images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth coloured blobs on a gradient: structure for blurs, colour for HSV edits."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        img = 0.3 * torch.rand(3, 1, 1, generator=gen) * (yy + xx)[None]
        for _ in range(4):
            cy, cx, r = torch.rand(3, generator=gen)
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.05 * r))
            img = img + torch.rand(3, 1, 1, generator=gen) * blob[None]
        out.append(img / img.max())
    return (torch.stack(out) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_images()


@pytest.fixture(scope="module")
def outputs(images):
    """Every corruption at every severity, twice with seed 0 and once with seed 1."""
    return {(name, s): (corr.corrupt(images, name, s, seed=0), corr.corrupt(images, name, s, seed=0),
                        corr.corrupt(images, name, s, seed=1))
            for name in ALL for s in corr.SEVERITIES}


def test_names_and_order():
    assert corr.CORRUPTIONS == ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                                "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                                "elastic_transform", "pixelate", "jpeg_compression")
    assert corr.EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")


@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_device_determinism(name, images, outputs):
    for s in corr.SEVERITIES:
        first, again, other = outputs[(name, s)]
        assert first.shape == images.shape and first.dtype == torch.uint8 and first.device == images.device
        assert torch.equal(first, again), f"{name} s{s} differs between two calls with the same seed"
        if name in RANDOM:
            assert not torch.equal(first, other), f"{name} s{s} ignores the seed"
        else:
            assert torch.equal(first, other), f"{name} s{s} is deterministic but depends on the seed"
        assert not torch.equal(first, images) or (name, s) in {("saturate", 1), ("saturate", 2)}


@pytest.mark.parametrize("name", ALL)
def test_severity_ordering(name, images, outputs):
    seeds = range(2, 6) if name in NOISY else ()
    dist = [np.mean([(outputs[(name, s)][0].float() - images.float()).abs().mean().item()]
                    + [(corr.corrupt(images, name, s, seed=k).float() - images.float()).abs().mean().item() for k in seeds])
            for s in corr.SEVERITIES]
    if name != "saturate":  # saturate 1 and 5 go opposite ways
        assert dist[-1] > dist[0], f"{name}: severity 5 changes less than severity 1: {dist}"
    for s in range(1, 5):
        if (name, s) not in NON_MONOTONE:
            assert dist[s] >= dist[s - 1] - 0.05, f"{name}: severity {s + 1} below {s}: {dist}"


def test_larger_images_and_one_channel():
    big = synthetic_images(2, 64, seed=3)
    for name in ALL:
        out = corr.corrupt(big, name, 3, seed=0)
        assert out.shape == big.shape and out.dtype == torch.uint8
    grey = synthetic_images(2, 32, seed=4)[:, :1]
    for name in ALL:
        out = corr.corrupt(grey, name, 2)
        assert out.shape == grey.shape and out.dtype == torch.uint8
    # a grey image stays grey under a grey-preserving corruption
    assert torch.equal(corr.corrupt(grey, "defocus_blur", 2), corr.corrupt(grey.expand(-1, 3, -1, -1), "defocus_blur", 2)[:, :1])


def test_non_square_and_empty_batches():
    rect = synthetic_images(2, 48, seed=5)[:, :, :40, :]
    for name in ALL:
        assert corr.corrupt(rect, name, 4).shape == rect.shape
    empty = torch.zeros((0, 3, 32, 32), dtype=torch.uint8)
    assert corr.corrupt(empty, "fog", 1).shape == empty.shape


def test_batch_composition_does_not_matter_for_deterministic_ones(images):
    for name in DETERMINISTIC:
        whole = corr.corrupt(images, name, 3)
        assert torch.equal(whole[:2], corr.corrupt(images[:2], name, 3))


def test_bad_arguments():
    imgs = synthetic_images(1)
    with pytest.raises(ValueError, match="valid names: gaussian_noise"):
        corr.corrupt(imgs, "rain", 1)
    with pytest.raises(ValueError, match="gaussian_noise"):
        corr.get_corruption("nope")
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity"):
            corr.corrupt(imgs, "fog", bad)
    with pytest.raises(TypeError, match="uint8"):
        corr.corrupt(imgs.float(), "fog", 1)
    with pytest.raises(ValueError, match="at least 32"):
        corr.corrupt(imgs[:, :, :16, :16], "fog", 1)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        corr.corrupt(imgs[:, :2], "fog", 1)
    with pytest.raises(TypeError):
        corr.corrupt(imgs.numpy(), "fog", 1)


def test_corrupt_all_yields_every_cell():
    imgs = synthetic_images(2)
    cells = list(corr.corrupt_all(imgs, ["contrast", "pixelate"], [1, 5], seed=3))
    assert [(n, s) for n, s, _ in cells] == [("contrast", 1), ("contrast", 5), ("pixelate", 1), ("pixelate", 5)]
    assert torch.equal(cells[1][2], corr.corrupt(imgs, "contrast", 5, seed=3))
    with pytest.raises(ValueError):
        list(corr.corrupt_all(imgs, ["contrast", "hail"]))


def test_frost_source_is_reported():
    assert corr.frost_source() in ("reference", "procedural")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stays_on_device():
    imgs = synthetic_images(2).cuda()
    for name in ALL:
        out = corr.corrupt(imgs, name, 3)
        assert out.device == imgs.device and out.shape == imgs.shape


# ------------------------------------------------------------ exact pieces


def _sequential_glass(x: np.ndarray, delta: int, offsets: np.ndarray) -> np.ndarray:
    """The reference's loop, copy semantics, with given per-visit offsets [visits, 2]."""
    h, w = x.shape[:2]
    k = 0
    for r in range(h - delta, delta, -1):
        for c in range(w - delta, delta, -1):
            dy, dx = offsets[k]
            x[r, c] = x[r + dy, c + dx]
            k += 1
    return x


@pytest.mark.parametrize("delta", [1, 3])
def test_glass_shuffle_replays_the_sequential_loop(delta, monkeypatch):
    n, h, w = 3, 32, 32
    rng = np.random.default_rng(delta)
    x = torch.from_numpy(rng.integers(0, 256, (n, 3, h, w), dtype=np.uint8))
    positions, _ = _blur._glass_schedule(h, w, delta)
    codes = torch.from_numpy(rng.integers(0, corr._common.CODE_LEVELS, positions.numel() * n, dtype=np.int32))
    monkeypatch.setattr(_blur, "random_codes", lambda *a, **k: codes)
    out = _blur._glass_shuffle(x.clone(), delta, 1, None)
    span = 2 * delta
    code = codes.view(-1, n).numpy()  # [visit in step order, image]
    order = np.argsort(positions.numpy())[::-1]  # raster-descending visit order -> step-order index
    for i in range(n):
        c = code[order, i] % (span * span)
        offsets = np.stack([c // span - delta, c % span - delta], axis=1)
        want = _sequential_glass(x[i].permute(1, 2, 0).numpy().copy(), delta, offsets)
        np.testing.assert_array_equal(out[i].permute(1, 2, 0).numpy(), want)


def test_motion_taps_follow_the_reference_rounding_and_stop():
    rows, cols, weights = _motion.motion_taps(20, 15.0, np.array([0.0, 30.0, -45.0]), 32, 32)
    assert rows[0].tolist() == [0] * 41 and cols[0, :5].tolist() == [0, 1, 2, 3, 4]
    # beyond |offset| >= 32 the reference breaks: weights drop to 0 and are not renormalised
    assert np.all(weights[0, 32:] == 0) and weights[0].sum() < 1.0
    assert rows[1, :4].tolist() == [0, 0, 1, 1]  # ceil(i*sin30 - 0.5): 0, 0, 0.5 -> 1 ... ties round down
    assert np.all(rows[2] == -cols[2])


def test_motion_blur_matches_a_direct_sum_of_taps():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((4, 3, 32, 36)).astype(np.float32) * 255)
    angles = np.array([7.0, -33.0, -100.0, -60.0])
    out = _motion.apply_motion(x, angles, 12, 8.0).numpy()
    rows, cols, weights = _motion.motion_taps(12, 8.0, angles, 32, 36)
    yy, xx = np.meshgrid(np.arange(32), np.arange(36), indexing="ij")
    for n in range(4):
        want = sum(k * x[n].numpy()[:, np.clip(yy + r, 0, 31), np.clip(xx + c, 0, 35)]
                   for r, c, k in zip(rows[n], cols[n], weights[n], strict=True))
        np.testing.assert_allclose(out[n], want, atol=1e-3)


# ------------------------------------------------------------- published


def _write_published(folder, name="fog", per=4, size=32, labels_per_severity=False):
    data = np.zeros((5 * per, size, size, 3), dtype=np.uint8)
    for s in range(5):
        data[s * per : (s + 1) * per] = s + 1  # every pixel holds its severity
    np.save(folder / f"{name}.npy", data)
    labels = np.arange(per if not labels_per_severity else 5 * per) % 10
    np.save(folder / "labels.npy", labels)
    return labels


def test_load_published_slices_by_severity(tmp_path):
    labels = _write_published(tmp_path)
    for s in corr.SEVERITIES:
        x, y = corr.load_published(tmp_path, "fog", s)
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and int(x.unique()) == s
        assert isinstance(y, np.ndarray) and y.dtype == np.int64 and y.tolist() == labels.tolist()
    x, y = corr.load_published(str(tmp_path), "fog", 2, n=3)
    assert x.shape[0] == 3 and y.tolist() == labels[:3].tolist()


def test_load_published_accepts_labels_repeated_per_severity(tmp_path):
    labels = _write_published(tmp_path, labels_per_severity=True)
    _, y = corr.load_published(tmp_path, "fog", 3)
    assert y.tolist() == labels[8:12].tolist()


def test_load_published_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        corr.load_published(tmp_path / "missing", "fog", 1)
    with pytest.raises(DataError, match="fog.npy is missing"):
        corr.load_published(tmp_path, "fog", 1)
    _write_published(tmp_path)
    with pytest.raises(DataError, match="snow.npy is missing"):
        corr.load_published(tmp_path, "snow", 1)
    np.save(tmp_path / "fog.npy", np.zeros((7, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"uint8 \[5\*M, H, W, 3\]"):
        corr.load_published(tmp_path, "fog", 1)
    np.save(tmp_path / "fog.npy", np.zeros((10, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="labels"):
        corr.load_published(tmp_path, "fog", 1)
    (tmp_path / "fog.npy").write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match="cannot read"):
        corr.load_published(tmp_path, "fog", 1)
