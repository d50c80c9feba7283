"""The whole user story through the real CLI: train -> export -> validate."""

from __future__ import annotations

import json

import pytest

from tests.train.helpers import SMOKE, cli


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("e2e") / "run"
    out = cli("train", str(SMOKE), "--run-dir", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    out = cli("export", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    return run


def test_validate_end_to_end_with_calibration(exported_run):
    out = cli("validate", str(exported_run), "--calibrate", "--json")
    assert out.returncode in (0, 1), out.stderr
    results = json.loads(out.stdout)
    assert results["exit_code"] == out.returncode
    assert results["clip_random"] is True  # the smoke recipe's random CLIP is never hidden
    # ... and its clip_pretrained gate holds only because smoke.yaml sets validate.allow_random_clip
    [clip] = [g for g in results["gates"] if g["gate"] == "clip_pretrained"]
    assert clip["status"] == "pass" and "allowed by validate.allow_random_clip" in clip["message"]
    names = {r["name"]: r for r in results["rows"]}
    assert {"torch-fp32", "teacher", "model.onnx", "model.int8.onnx", "model.calibrated.onnx"} <= set(names)
    fp32 = names["model.onnx"]
    assert fp32["agreement"]["student"]["top1_agreement"] == 1.0
    assert abs(fp32["clean"]["top1"] - names["torch-fp32"]["clean"]["top1"]) < 1e-9
    assert set(fp32["corruptions"]["accuracy"]) == {"gaussian_noise", "defocus_blur", "brightness", "jpeg_compression"}
    # temperature scaling folded into the graph: same argmax, different confidence
    cal = names["model.calibrated.onnx"]
    assert cal["clean"]["top1"] == fp32["clean"]["top1"] and cal["clean"]["nll"] != fp32["clean"]["nll"]
    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.calibrated.onnx")
    assert entry["temperature"] > 0
    for name in ("results.json", "report.md", "report.html"):
        assert (exported_run / "eval" / name).stat().st_size > 0


def test_an_artifact_changed_after_export_is_refused(exported_run, tmp_path):
    target = exported_run / "export" / "model.int8.onnx"
    original = target.read_bytes()
    try:
        target.write_bytes(original[:-10] + b"0123456789")
        out = cli("validate", str(exported_run))
        assert out.returncode == 2
        assert "changed since export" in out.stderr and "Traceback" not in out.stderr
    finally:
        target.write_bytes(original)


def test_export_refuses_to_overwrite_without_force(exported_run):
    out = cli("export", str(exported_run), "--quiet")
    assert out.returncode == 2 and "--force" in out.stderr


def test_export_trt_without_tensorrt_keeps_the_onnx_files(exported_run):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    out = cli("export", str(exported_run), "--trt", "--force", "--quiet")
    assert out.returncode == 2 and "richkd-deploy[trt]" in out.stderr
    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    assert {"model.onnx", "model.int8.onnx"} <= {a["file"] for a in manifest["artifacts"]}
