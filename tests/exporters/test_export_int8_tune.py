"""Accuracy-aware INT8: calibration methods, the holdout method search, per-layer
sensitivity and the fallback loop on a model built to fail INT8."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from exporters.inputs import ExportData
from exporters.int8 import Int8Options, quantize_int8
from exporters.int8_tune import Holdout, mean_kl, tune_int8
from exporters.metadata import read_metadata
from exporters.onnx_fp32 import export_onnx
from exporters.pipeline import export_student
from richkd_deploy.recipe import ExportConfig, GatesConfig, Int8Config
from richkd_deploy.runtime import agreement
from richkd_deploy.runtime.onnxruntime import kernel_counts, make_session, run_session
from richkd_deploy.student import Student

from .helpers import payload_for

OUTLIER = 1000.0


def outlier_model(model: nn.Module) -> nn.Module:
    """The trained TinyNet with channel 0 of conv1's output scaled by OUTLIER and conv2's
    weights for that channel divided by it: the same function in float, but one
    activation channel 1000x larger than the rest, so a per-tensor int8 scale for that
    tensor rounds the other channels away."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        bn = m.conv1[1]
        bn.weight[0] *= OUTLIER
        bn.bias[0] *= OUTLIER
        m.conv2[0].weight[:, 0] /= OUTLIER
    return m


@pytest.fixture(scope="module")
def onnx_pair(trained_tiny: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tune")
    return {"good": export_onnx(trained_tiny, d / "good.onnx", (3, 32, 32), 17, {}),
            "bad": export_onnx(outlier_model(trained_tiny), d / "bad.onnx", (3, 32, 32), 17, {})}


def _holdout(path: Path, fmnist: dict, gates: GatesConfig) -> Holdout:
    x, y = fmnist["train"][0][2000:2400], fmnist["train"][1][2000:2400]  # not the calibration images
    ref = run_session(make_session(path), x)
    return Holdout(x, y, ref, gates.max_top1_drop, gates.min_agreement)


def _calibration(fmnist: dict) -> np.ndarray:
    return fmnist["train"][0][:128]


def test_the_outlier_model_is_the_same_function_in_float(trained_tiny: nn.Module, fmnist: dict) -> None:
    x = torch.from_numpy(fmnist["test"][0][:64])
    with torch.no_grad():
        assert torch.allclose(trained_tiny(x), outlier_model(trained_tiny)(x), atol=1e-3)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_each_calibration_method_writes_an_int8_graph(onnx_pair: dict, fmnist: dict, tmp_path: Path,
                                                      method: str) -> None:
    path = quantize_int8(onnx_pair["good"], [_calibration(fmnist)], tmp_path / "m.onnx", Int8Options(method=method))
    meta = read_metadata(onnx.load(str(path)))["quantization"]
    assert meta["calibration"] == {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}[method]
    assert kernel_counts(path)["float"] == 0
    xte = fmnist["test"][0]
    assert agreement(run_session(make_session(onnx_pair["good"]), xte), run_session(make_session(path), xte)) >= 0.9


def test_methods_give_different_ranges(onnx_pair: dict, fmnist: dict, tmp_path: Path) -> None:
    """The calibrators are really different: MinMax and Percentile scales differ."""
    def scales(method: str) -> dict[str, float]:
        m = onnx.load(str(quantize_int8(onnx_pair["good"], [_calibration(fmnist)], tmp_path / f"{method}.onnx",
                                        Int8Options(method=method))))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
        return {n.input[1]: float(inits[n.input[1]]) for n in m.graph.node
                if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1}
    a, b = scales("minmax"), scales("percentile")
    assert a.keys() == b.keys() and any(abs(a[k] - b[k]) > 1e-6 for k in a)


def test_plain_int8_fails_on_the_outlier_model(onnx_pair: dict, fmnist: dict, tmp_path: Path) -> None:
    path = quantize_int8(onnx_pair["bad"], [_calibration(fmnist)], tmp_path / "m.onnx")
    holdout = _holdout(onnx_pair["bad"], fmnist, GatesConfig())
    row = holdout.measure(path, "plain", Int8Options(), timed=False)
    assert not row["passes"] and row["agreement_with_fp32"] < 0.9, row


def test_fallback_keeps_the_outlier_layers_in_float_until_the_gates_hold(onnx_pair: dict, fmnist: dict,
                                                                         tmp_path: Path) -> None:
    gates = GatesConfig(max_top1_drop=0.02, min_agreement=0.95)
    holdout = _holdout(onnx_pair["bad"], fmnist, gates)
    logs: list[str] = []
    out = tmp_path / "model.int8.onnx"
    record = tune_int8(onnx_pair["bad"], _calibration(fmnist), out, Int8Config(sensitivity=True), holdout,
                       logs.append)
    assert not record["candidates"][0]["passes"]
    table = record["sensitivity"]
    assert [r["layer"] for r in table][:2] and {table[0]["module"], table[1]["module"]} == {"conv1.0", "conv2.0"}, table
    assert all(set(r) == {"layer", "module", "quantized_alone", "kept_float_alone"} for r in table)
    steps = record["fallback_steps"]
    assert [s["step"] for s in steps] == [f"fallback {k}" for k in range(1, len(steps) + 1)]
    assert steps[-1]["passes"] and all(not s["passes"] for s in steps[:-1])
    assert record["passes_on_holdout"] and record["reason"] is None
    assert set(record["layers_in_float"]) >= {table[0]["layer"], table[1]["layer"]}
    for s in steps:
        assert s["p50_ms_batch64"] > 0 and 0 <= s["agreement_with_fp32"] <= 1 and s["layers_in_float"]
    meta = read_metadata(onnx.load(str(out)))["quantization"]
    assert meta["layers_in_float"] == record["layers_in_float"]
    assert record["kernels"]["float"] == len(record["layers_in_float"])
    assert holdout.measure(out, "final", Int8Options(), timed=False)["passes"]


def test_when_nothing_passes_the_best_failing_artifact_is_kept_with_its_reason(onnx_pair: dict, fmnist: dict,
                                                                              tmp_path: Path) -> None:
    holdout = _holdout(onnx_pair["bad"], fmnist, GatesConfig(max_top1_drop=0.0, min_agreement=1.0))
    out = tmp_path / "model.int8.onnx"
    record = tune_int8(onnx_pair["bad"], _calibration(fmnist), out, Int8Config(max_float_layers=1), holdout,
                       lambda _m: None)
    assert not record["passes_on_holdout"] and "min_agreement" in record["reason"]
    rows = [*record["candidates"], *record["fallback_steps"]]
    assert len(record["fallback_steps"]) == 1
    best = min(r["holdout_top1_drop"] for r in rows)
    assert next(r for r in rows if r["step"] == record["chosen"])["holdout_top1_drop"] == best
    assert out.exists()


def test_search_tries_every_method_and_keeps_a_passing_one(onnx_pair: dict, fmnist: dict, tmp_path: Path) -> None:
    holdout = _holdout(onnx_pair["good"], fmnist, GatesConfig(max_top1_drop=0.05, min_agreement=0.9))
    record = tune_int8(onnx_pair["good"], _calibration(fmnist), tmp_path / "m.onnx", Int8Config(search=True),
                       holdout, lambda _m: None)
    assert [c["step"] for c in record["candidates"]] == ["minmax", "entropy", "percentile"]
    chosen = next(c for c in record["candidates"] if c["step"] == record["chosen"])
    assert chosen["passes"]
    fastest = min(c["p50_ms_batch64"] for c in record["candidates"] if c["passes"])
    assert chosen["p50_ms_batch64"] <= fastest * 1.1
    assert chosen["kl_to_fp32"] == min(c["kl_to_fp32"] for c in record["candidates"]
                                       if c["passes"] and c["p50_ms_batch64"] <= fastest * 1.1)
    assert record["fallback_steps"] == [] and "sensitivity" not in record


def test_mean_kl() -> None:
    a = np.array([[1.0, 2.0, 3.0]], np.float32)
    assert mean_kl(a, a) == pytest.approx(0.0, abs=1e-12)
    p, q = np.exp(a) / np.exp(a).sum(), np.exp(a[:, ::-1]) / np.exp(a[:, ::-1]).sum()
    assert mean_kl(a, a[:, ::-1].copy()) == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-6)


def test_export_manifest_records_the_tuning(trained_tiny: nn.Module, fmnist: dict, tmp_path: Path) -> None:
    """The int8 entry of manifest.json: the settings, the candidates on the holdout, the
    sensitivity table, the fallback steps and the layers kept in float."""
    xte, yte = fmnist["test"]
    xtr, ytr = fmnist["train"]
    data = ExportData(xte[:256], yte[:256], xtr[:128], fmnist["name"], holdout_x=xtr[2000:2400],
                      holdout_y=ytr[2000:2400])
    cfg = ExportConfig(parity_images=64, calibration_images=128, precisions=("fp32", "int8"))
    student = Student(outlier_model(trained_tiny), payload_for(fmnist), sha256=None)
    manifest = export_student(student, data, tmp_path / "export", cfg, quiet=True, log=lambda _m: None,
                              gates=GatesConfig(max_top1_drop=0.02, min_agreement=0.95))
    entry: dict[str, Any] = next(a for a in manifest.artifacts if a["precision"] == "int8")
    tuning = entry["int8_tuning"]
    assert tuning["passes_on_holdout"] and tuning["layers_in_float"] and tuning["fallback_steps"]
    assert tuning["holdout"]["images"] == 400 and tuning["sensitivity"][0]["quantized_alone"]["kl_to_fp32"] > 0
    assert entry["quantization"]["layers_in_float"] == tuning["layers_in_float"]
    assert entry["quantization"]["calibration_split"] == "train"


@pytest.fixture(scope="module")
def corrupted(fmnist: dict) -> dict[str, Any]:
    """Noisy copies (validate's impulse_noise, severity 5) of the calibration and holdout images."""
    from exporters.inputs import corrupted_arrays
    from richkd_deploy import data
    from richkd_deploy.evaluate.corruptions import corrupt

    ds = data.build_dataset(fmnist["name"], "train", limit=3000, seed=0)
    cal = corrupted_arrays(ds, ["impulse_noise:5"], corrupt, 32, fmnist["mean"], fmnist["std"], 0, limit=128)
    return {"cal": cal["impulse_noise:5"], "corrupt": corrupt, "ds": ds}


def test_coverage_is_zero_on_the_calibration_images_and_not_on_corrupted_ones(onnx_pair: dict, fmnist: dict,
                                                                               corrupted: dict, tmp_path: Path) -> None:
    from exporters.int8_coverage import activation_coverage

    clean = _calibration(fmnist)
    path = quantize_int8(onnx_pair["good"], [clean], tmp_path / "m.onnx")
    cov = activation_coverage(path, {"calibration": clean, "noisy": corrupted["cal"]})
    # MinMax ranges cover the images they were measured on (up to the few values that
    # quantization errors upstream push past them: the probe reads the quantized network)
    assert cov["calibration"] < 1e-4
    assert cov["noisy"] > 5 * cov["calibration"] and len(cov["tensors"]) >= 5
    mixed = quantize_int8(onnx_pair["good"], [clean, corrupted["cal"]], tmp_path / "mixed.onnx")
    cov2 = activation_coverage(mixed, {"noisy": corrupted["cal"]})
    assert cov2["noisy"] < 1e-4 < cov["noisy"]


def test_corrupted_calibration_needs_the_corruption_function() -> None:
    from exporters.inputs import build_export_data
    from richkd_deploy import recipe as recipe_mod
    from richkd_deploy.errors import ArtifactError, RecipeError

    with pytest.raises(RecipeError, match="name:severity"):
        recipe_mod.load("recipes/smoke.yaml", ["export.int8.calibration_corruptions=[gaussian_noise]"])
    r = recipe_mod.load("recipes/smoke.yaml", ["export.int8.calibration_corruptions=['gaussian_noise:3']"])
    meta = {"input_size": r.data.input_size, "mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(ArtifactError, match="calibration_corruptions needs"):
        build_export_data(r, meta)


def test_export_records_the_calibration_mix_and_coverage(trained_tiny: nn.Module, fmnist: dict, corrupted: dict,
                                                         tmp_path: Path) -> None:
    xte, yte = fmnist["test"]
    xtr, ytr = fmnist["train"]
    data = ExportData(xte[:256], yte[:256], xtr[:128], fmnist["name"], holdout_x=xtr[2000:2200],
                      holdout_y=ytr[2000:2200], calibration_corrupted={"impulse_noise:5": corrupted["cal"]},
                      holdout_corrupted={"impulse_noise:5": corrupted["cal"][:64]})
    cfg = ExportConfig(parity_images=64, calibration_images=128, precisions=("fp32", "int8"))
    manifest = export_student(Student(trained_tiny, payload_for(fmnist), sha256=None), data, tmp_path / "export",
                              cfg, quiet=True, log=lambda _m: None, gates=GatesConfig(max_top1_drop=0.05))
    entry = next(a for a in manifest.artifacts if a["precision"] == "int8")
    tuning = entry["int8_tuning"]
    assert tuning["calibration_mix"] == ["clean", "impulse_noise:5"]
    assert entry["quantization"]["calibration_images"] == 256  # 128 clean + 128 corrupted
    cov = tuning["coverage"]
    assert set(cov) >= {"clean", "impulse_noise:5", "tensors"} and cov["impulse_noise:5"] < 1e-3
    assert all({"tensor", "range", "clean", "impulse_noise:5"} <= set(r) for r in cov["tensors"])


def test_calibration_cache_reuses_the_ranges(onnx_pair: dict, fmnist: dict, tmp_path: Path) -> None:
    """The sensitivity/fallback graphs reuse one calibration (onnxruntime's calibration
    cache): a second call with other images but the same cache gets the same scales."""
    from exporters.int8 import _supports_calibration_cache

    if not _supports_calibration_cache():
        pytest.skip("this onnxruntime has no calibration cache (it calibrates each graph again)")

    def scales(path: Path) -> list[float]:
        m = onnx.load(str(path))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
        return [float(inits[n.input[1]]) for n in m.graph.node
                if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1]

    cache = tmp_path / "ranges.json"
    xtr = fmnist["train"][0]
    a = quantize_int8(onnx_pair["good"], [xtr[:64]], tmp_path / "a.onnx", calibration_cache=cache)
    assert cache.exists()
    b = quantize_int8(onnx_pair["good"], [xtr[1000:1032] * 3], tmp_path / "b.onnx", calibration_cache=cache)
    c = quantize_int8(onnx_pair["good"], [xtr[1000:1032] * 3], tmp_path / "c.onnx")
    assert scales(a) == scales(b) != scales(c)
    assert read_metadata(onnx.load(str(b)))["quantization"]["calibration_images"] == 32
