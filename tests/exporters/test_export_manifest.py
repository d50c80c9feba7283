"""The export manifest: commit record, hash checks, later additions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from richkd_deploy.errors import ArtifactError
from richkd_deploy.manifest import (
    SCHEMA,
    add_artifact,
    artifact_entry,
    build_manifest,
    check_can_export,
    read_manifest,
    remove_manifest,
    verify_artifact,
    write_manifest,
)


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run" / "export"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"fp32 model")
    (d / "model.int8.onnx").write_bytes(b"int8 model")
    entries = [artifact_entry(d, "model.onnx", "onnx", "fp32", parity={"max_abs_diff": 1e-6, "top1_agreement": 1.0},
                              accuracy={"top1": 0.9, "n": 10}),
               artifact_entry(d, "model.int8.onnx", "onnx", "int8", source="model.onnx")]
    write_manifest(build_manifest(d, entries, opset=17, recipe_hash="abc", device="cpu"))
    return d


def test_round_trip_from_run_or_export_folder(export_dir: Path) -> None:
    for where in (export_dir.parent, export_dir, export_dir / "manifest.json"):
        m = read_manifest(where)
        assert m["schema"] == SCHEMA and m["opset"] == 17 and m["recipe_hash"] == "abc"
        assert m.export_dir == export_dir
    m = read_manifest(export_dir)
    assert [a["file"] for a in m["artifacts"]] == ["model.onnx", "model.int8.onnx"]
    fp32 = m.artifact("model.onnx")
    assert fp32["size"] == len(b"fp32 model") and fp32["parity"]["top1_agreement"] == 1.0
    assert set(m["tools"]) >= {"torch", "onnx", "onnxruntime", "tensorrt"} and m["tools"]["tensorrt"] is None
    assert m["created_at"]


def test_verify_accepts_unchanged_and_refuses_changed(export_dir: Path) -> None:
    m = read_manifest(export_dir)
    assert verify_artifact(m, "model.onnx") == export_dir / "model.onnx"
    assert verify_artifact(m, export_dir / "model.int8.onnx")  # any path to it works
    (export_dir / "model.int8.onnx").write_bytes(b"int8 model, edited")
    with pytest.raises(ArtifactError, match=r"changed since export \(sha256 .*re-export with richkd-deploy export --force"):
        verify_artifact(m, "model.int8.onnx")
    (export_dir / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        verify_artifact(m, "model.onnx")
    with pytest.raises(ArtifactError, match="not listed"):
        verify_artifact(m, "other.onnx")


def test_missing_and_corrupt_manifests(tmp_path: Path, export_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="run richkd-deploy export first"):
        read_manifest(tmp_path / "nowhere")
    path = export_dir / "manifest.json"
    path.write_text('{"schema": "richkd-deploy/export-manifest/1", "artifacts": [')
    with pytest.raises(ArtifactError, match="corrupt"):
        read_manifest(export_dir)
    path.write_text(json.dumps({"schema": "something/else", "artifacts": []}))
    with pytest.raises(ArtifactError, match="schema"):
        read_manifest(export_dir)
    path.write_text(json.dumps({"schema": SCHEMA, "artifacts": [
        {"file": "../../etc/passwd", "sha256": "0", "size": 1, "kind": "onnx", "precision": "fp32"}]}))
    with pytest.raises(ArtifactError, match="outside the export folder"):
        read_manifest(export_dir)


def test_manifest_refuses_to_list_an_incomplete_file(export_dir: Path) -> None:
    m = read_manifest(export_dir)
    (export_dir / "model.onnx").write_bytes(b"fp32 mod")  # truncated after hashing
    with pytest.raises(ArtifactError, match="refusing to write a manifest"):
        write_manifest(m)


def test_add_artifact_later(export_dir: Path) -> None:
    (export_dir / "model.calibrated.onnx").write_bytes(b"calibrated")
    m = add_artifact(export_dir.parent, "model.calibrated.onnx", "onnx", "fp32", source="model.onnx",
                     extra={"temperature": 1.7})
    again = read_manifest(export_dir)
    assert again == m and again.artifact("model.calibrated.onnx")["temperature"] == 1.7
    assert verify_artifact(again, "model.calibrated.onnx")
    (export_dir / "model.calibrated.onnx").write_bytes(b"calibrated v2")
    add_artifact(export_dir, "model.calibrated.onnx", "onnx", "fp32")  # replaces its own entry
    files = [a["file"] for a in read_manifest(export_dir)["artifacts"]]
    assert files.count("model.calibrated.onnx") == 1


def test_existing_export_needs_force(export_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="pass --force"):
        check_can_export(export_dir, force=False)
    check_can_export(export_dir, force=True)
    old = remove_manifest(export_dir)
    assert old is not None and len(old["artifacts"]) == 2
    assert not (export_dir / "manifest.json").exists()
    check_can_export(export_dir, force=False)
