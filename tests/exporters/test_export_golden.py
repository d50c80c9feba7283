"""The preprocessing contract, export/golden.npz and `richkd-deploy verify` (issue 13 item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exporters.contract import CONTRACT_FORMAT, build_contract, preprocess, raw_from_dataset
from exporters.golden import GOLDEN_FILE, read_golden, write_golden
from exporters.metadata import read_metadata
from exporters.pipeline import export_run
from richkd_deploy import data
from richkd_deploy.cli import main
from richkd_deploy.errors import DataError

from .helpers import make_run, quiet_log


def _fmnist_or_synthetic(limit: int = 64) -> tuple[object, str]:
    try:
        return data.build_dataset("fashion-mnist", "test", limit=limit, seed=0), "fashion-mnist"
    except DataError:
        return data.build_dataset("synthetic", "test", limit=limit, seed=0), "synthetic"


def _payload(name: str, size: int = 32) -> dict:
    mean, std = data.default_mean_std(name)
    return {"input_size": size, "mean": list(mean), "std": list(std), "classes": ["a"] * 10,
            "recipe": {"data": {"dataset": name}}}


@pytest.mark.parametrize("size", [32, 48])
def test_the_contract_alone_reproduces_the_eval_transform(size: int) -> None:
    """Raw images + the recorded contract give exactly what export and validate feed the model."""
    ds, name = _fmnist_or_synthetic()
    contract = build_contract(_payload(name, size))
    idx = np.arange(len(ds))
    raw = raw_from_dataset(ds, idx, contract)
    if name == "fashion-mnist":
        assert raw.shape == (len(ds), 28, 28) and contract["raw_channels"] == "grey"
        assert contract["pad"] == {"size": [32, 32], "value": 0, "align": "centre", "raw_size": [28, 28]}
    want = data.eval_transform(size, *data.default_mean_std(name)).apply_batch(ds.images[idx]).numpy()
    got = preprocess(raw, contract)
    assert got.shape == want.shape == (len(ds), 3, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_contract_names_every_choice_a_device_team_must_make() -> None:
    c = build_contract(_payload("fashion-mnist"))
    assert c["format"] == CONTRACT_FORMAT and c["layout"] == "NCHW" and c["pixel_scale"] == [0, 255]
    assert c["mean_std_scale"] == "0..1" and c["resize"]["method"] == "bilinear" and len(c["classes"]) == 10
    json.dumps(c)  # plain data
    wrong_scale = dict(c, pixel_scale=[0, 1])  # the 0..255 guess: a different input altogether
    raw = np.full((1, 28, 28), 200, np.uint8)
    assert np.abs(preprocess(raw, wrong_scale) - preprocess(raw, c)).max() > 100


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(tmp_path_factory.mktemp("golden") / "runs" / "exp")
    export_run(run, quiet=True, log=quiet_log)
    return run


def test_export_writes_golden_vectors_listed_in_the_manifest(exported: Path) -> None:
    manifest = json.loads((exported / "export" / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == GOLDEN_FILE)
    assert entry["kind"] == "golden"
    g = read_golden(exported / "export" / GOLDEN_FILE)
    assert g.images.dtype == np.uint8 and 16 <= len(g.images) <= 64 and g.images.shape[1:] == (32, 32, 3)
    assert {"model.onnx", "model.int8.onnx", "model.fp16.onnx", "student.pt"} <= set(g.logits)
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx"):
        assert read_metadata(exported / "export" / name)["preprocess"] == g.contract


def _verify(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(["verify", *args])
    return int(exc.value.code)


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx", "model.fp16.onnx"])
def test_verify_passes_on_the_exported_files(exported: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    assert _verify(str(exported / "export" / name), "--runtime", "onnxruntime") == 0
    assert capsys.readouterr().out.startswith(f"OK: {name} on onnxruntime-cpu")


def test_verify_the_torch_student(exported: Path) -> None:
    assert _verify(str(exported / "student.pt"), "--runtime", "torch") == 0


def test_verify_fails_when_the_logits_differ(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    g = read_golden(exported / "export" / GOLDEN_FILE)
    logits = dict(g.logits)
    logits["model.onnx"] = logits["model.onnx"] + 0.01
    bad = write_golden(tmp_path / "golden.npz", g.images, g.labels, g.indices, g.contract, logits)
    assert _verify(str(exported / "export" / "model.onnx"), "--golden", str(bad)) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert _verify(str(exported / "export" / "model.onnx"), "--runtime", "torch") == 2
