"""The export manifest: what `richkd-deploy export` produced, and proof it is unchanged.

`RUN/export/manifest.json` lists every artifact of one export with its sha256, size,
precision and the parity/accuracy numbers measured when it was made, plus the tool
versions that made it. It is the *commit record* of an export: it is written last and
atomically, and it only ever lists files that were complete on disk when it was
written. So after a crash or a `kill -9` at any moment a reader sees either a complete
export (manifest present, every listed file matches its hash) or no manifest at all;
never a manifest that vouches for half a file.

Downstream commands (`validate`, `bench`, backends) call `verify_artifact` before
loading a file, so an artifact edited, truncated or swapped after export is refused
instead of silently evaluated.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from richkd_deploy.errors import ArtifactError
from richkd_deploy.runs import RunDir, atomic_write_json, fsync_dir, sha256_file

SCHEMA = "richkd-deploy/export-manifest/1"
MANIFEST_NAME = "manifest.json"
REEXPORT_HINT = "re-export with richkd-deploy export --force"


class Manifest(dict):
    """A manifest as a plain dict (JSON-serialisable, what the CLI returns) that also
    remembers the folder it describes, because artifact paths inside are relative."""

    def __init__(self, data: Mapping[str, Any], export_dir: Path) -> None:
        super().__init__(data)
        self.export_dir = Path(export_dir)

    @property
    def path(self) -> Path:
        return self.export_dir / MANIFEST_NAME

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return list(self.get("artifacts", []))

    def artifact(self, file: str | Path) -> dict[str, Any] | None:
        return find_artifact(self, file)




def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def export_dir_of(run_or_export_dir: str | Path) -> Path:
    """Accept a run folder, its `export/` folder, or the manifest file itself."""
    p = Path(run_or_export_dir)
    if p.name == MANIFEST_NAME:
        return p.parent
    if (p / MANIFEST_NAME).exists() or p.name == "export":
        return p
    return RunDir(p).export_dir


def tool_versions(tensorrt_version: str | None = None) -> dict[str, str | None]:
    """Versions of everything that shaped the artifacts; tensorrt only when it built some."""
    versions: dict[str, str | None] = {}
    for name in ("torch", "onnx", "onnxruntime", "onnxconverter_common"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "unknown"))
        except ImportError:
            versions[name] = None
    from richkd_deploy import __version__

    versions["richkd_deploy"] = __version__
    versions["tensorrt"] = tensorrt_version
    versions["python"] = platform.python_version()
    return versions


def artifact_entry(export_dir: Path, file: str | Path, kind: str, precision: str, *,
                   source: str | None = None, parity: Mapping[str, Any] | None = None,
                   accuracy: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Describe a finished file; hashes what is on disk now, so call it only after the
    file's final atomic write."""
    path = Path(export_dir) / file
    if not path.is_file():
        raise ArtifactError(f"cannot list {path} in the manifest: the file does not exist")
    entry: dict[str, Any] = {
        "file": Path(file).as_posix(),
        "kind": kind,
        "precision": precision,
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "source": source,
        "parity": dict(parity) if parity is not None else None,
        "accuracy": dict(accuracy) if accuracy is not None else None,
    }
    if extra:
        entry.update(extra)
    return entry


def build_manifest(export_dir: Path, artifacts: Iterable[Mapping[str, Any]], *, opset: int | None,
                   recipe_hash: str | None, device: Mapping[str, Any] | str,
                   tensorrt_version: str | None = None, extra: Mapping[str, Any] | None = None) -> Manifest:
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "created_at": now_iso(),
        "recipe_hash": recipe_hash,
        "opset": opset,
        "device": device,
        "tools": tool_versions(tensorrt_version),
    }
    if extra:
        data.update(extra)
    data["artifacts"] = [dict(a) for a in artifacts]
    return Manifest(data, export_dir)


def write_manifest(manifest: Manifest) -> Manifest:
    """Write atomically. Every listed file must exist with its recorded hash: the
    manifest is the commit point, so it refuses to vouch for anything else."""
    for entry in manifest.get("artifacts", []):
        path = manifest.export_dir / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"refusing to write a manifest listing {path}: it is missing or differs from its entry")
    atomic_write_json(manifest.path, dict(manifest))
    return manifest


def read_manifest(run_or_export_dir: str | Path) -> Manifest:
    """Load and sanity-check `manifest.json`; ArtifactError says what to run if not."""
    export_dir = export_dir_of(run_or_export_dir)
    path = export_dir / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"no export manifest at {path}: run richkd-deploy export first "
                            "(an interrupted export leaves none; rerun it with --force)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"export manifest {path} is unreadable or corrupt ({type(exc).__name__}); {REEXPORT_HINT}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("artifacts"), list):
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ArtifactError(f"export manifest {path} has schema {found!r}, expected {SCHEMA!r}; {REEXPORT_HINT}")
    for entry in data["artifacts"]:
        if not isinstance(entry, dict) or not {"file", "sha256", "size", "kind", "precision"} <= set(entry):
            raise ArtifactError(f"export manifest {path} has a malformed artifact entry; {REEXPORT_HINT}")
        if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
            raise ArtifactError(f"export manifest {path} lists {entry['file']!r} outside the export folder; {REEXPORT_HINT}")
    return Manifest(data, export_dir)


def _resolve(manifest: Manifest, file: str | Path) -> Path:
    p = Path(file)
    if p.is_absolute():
        return p
    if p.exists() and not (manifest.export_dir / p).exists():
        return p.resolve()
    return manifest.export_dir / p


def find_artifact(manifest: Manifest, file: str | Path) -> dict[str, Any] | None:
    """The entry for `file` (a name relative to the export folder, or any path to it)."""
    target = _resolve(manifest, file).resolve()
    for entry in manifest.get("artifacts", []):
        if (manifest.export_dir / entry["file"]).resolve() == target:
            return entry
    return None


def verify_artifact(manifest: Manifest, file: str | Path) -> Path:
    """Return the artifact's path after checking it still is what was exported."""
    entry = find_artifact(manifest, file)
    if entry is None:
        raise ArtifactError(f"{file} is not listed in {manifest.path}; {REEXPORT_HINT}")
    path = manifest.export_dir / entry["file"]
    if not path.is_file():
        raise ArtifactError(f"{path} is listed in the export manifest but missing; {REEXPORT_HINT}")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ArtifactError(f"{path} changed since export (sha256 {actual[:12]}..., manifest says "
                            f"{entry['sha256'][:12]}...); {REEXPORT_HINT}")
    return path


def add_artifact(run_or_export_dir: str | Path, file: str | Path, kind: str, precision: str, *,
                 source: str | None = None, parity: Mapping[str, Any] | None = None,
                 accuracy: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                 tensorrt_version: str | None = None) -> Manifest:
    """Record a file made after the export (e.g. `validate --calibrate`'s
    model.calibrated.onnx). The file must already be in place (atomically written);
    an existing entry for the same file is replaced. The manifest is rewritten
    atomically, so a crash leaves the previous manifest, still correct."""
    manifest = read_manifest(run_or_export_dir)
    entry = artifact_entry(manifest.export_dir, Path(file).name if Path(file).is_absolute() else file, kind,
                           precision, source=source, parity=parity, accuracy=accuracy, extra=extra)
    artifacts = [a for a in manifest.get("artifacts", []) if a["file"] != entry["file"]]
    artifacts.append(entry)
    manifest["artifacts"] = artifacts
    manifest["updated_at"] = now_iso()
    if tensorrt_version is not None:
        manifest.setdefault("tools", {})["tensorrt"] = tensorrt_version
    return write_manifest(manifest)


def check_can_export(export_dir: Path, force: bool) -> None:
    """An existing complete export is only replaced on request."""
    path = Path(export_dir) / MANIFEST_NAME
    if path.exists() and not force:
        raise ArtifactError(f"{export_dir} already holds an export ({MANIFEST_NAME}); "
                            "pass --force to replace it")


def remove_manifest(export_dir: Path) -> Manifest | None:
    """Withdraw the current manifest (returning what it listed) before any listed file
    is replaced, so no manifest ever vouches for a file being rewritten."""
    path = Path(export_dir) / MANIFEST_NAME
    old: Manifest | None = None
    with contextlib.suppress(ArtifactError):
        old = read_manifest(export_dir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        fsync_dir(Path(export_dir))
    return old
