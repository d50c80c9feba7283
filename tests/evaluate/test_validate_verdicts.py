"""validate end to end on a tiny exported run: the verdicts of issue 13 (random CLIP never
ships unless allowed; intervals and the worst-class gate reach results.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exporters.pipeline import export_run
from richkd_deploy.evaluate.harness import validate_run
from tests.exporters.helpers import make_run, quiet_log


def _set_payload(run: Path, **changes: object) -> None:
    payload = torch.load(run / "student.pt", map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if key == "validate":
            payload["recipe"]["validate"].update(value)
        else:
            payload[key] = value
    torch.save(payload, run / "student.pt")


@pytest.fixture(scope="module")
def random_clip_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(tmp_path_factory.mktemp("verdicts") / "runs" / "exp")
    _set_payload(run, clip_random=True, validate={
        "corruptions": {"names": ["brightness"], "severities": [1], "samples": 50, "source": None, "seed": 0}})
    export_run(run, quiet=True, log=quiet_log)
    return run


def test_a_random_clip_run_fails_validate_with_a_gate_naming_the_cause(random_clip_run: Path) -> None:
    res = validate_run(random_clip_run, quiet=True, log=quiet_log)
    [clip] = [g for g in res["gates"] if g["gate"] == "clip_pretrained"]
    assert clip["status"] == "fail" and "RANDOM CLIP" in clip["message"]
    assert res["exit_code"] == 1
    report = (random_clip_run / "eval" / "report.md").read_text()
    assert "clip_pretrained" in report and "FAIL: do not ship" in report
    # the uncertainty and worst-class figures travel in results.json
    doc = json.loads((random_clip_run / "eval" / "results.json").read_text())
    onnx = next(r for r in doc["rows"] if r["name"] == "model.onnx")
    assert onnx["top1_drop"]["method"].startswith("paired bootstrap")
    assert onnx["agreement"]["student"]["top1_agreement_interval"]["method"].startswith("exact binomial")
    assert len(onnx["clean"]["per_class_top1"]) == 10
    gates = {(g["gate"], g["artifact"]): g for g in doc["gates"]}
    assert gates[("max_class_top1_drop", "model.onnx")]["status"] == "pass"
    assert gates[("max_top1_drop", "model.int8.onnx")]["interval"] is not None


def test_the_recipe_can_allow_random_clip(random_clip_run: Path) -> None:
    _set_payload(random_clip_run, validate={"allow_random_clip": True})
    try:
        res = validate_run(random_clip_run, quiet=True, log=quiet_log)
    finally:
        _set_payload(random_clip_run, validate={"allow_random_clip": False})
    [clip] = [g for g in res["gates"] if g["gate"] == "clip_pretrained"]
    assert clip["status"] == "pass" and "allowed by validate.allow_random_clip" in clip["message"]
