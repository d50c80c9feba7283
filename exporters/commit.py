"""The export's commit protocol: stage every file, then move it in and write the manifest last.

Every artifact is first built in `RUN/export/.staging-<pid>/`. Only when all of them
are built and checked does the commit happen: the old manifest is withdrawn, the
files are moved in with atomic renames, files of the replaced export that the new one
does not produce are deleted, and the new manifest is written last (atomically). A
`kill -9` at any moment therefore leaves the old complete export, no manifest, or the
new complete export; a manifest never lists a partial file.

Files added to an existing export (TensorRT engines, the temperature-calibrated
model) are a second commit of the same shape (`append`): entries they replace are
withdrawn from the manifest first, then the files move in, then the manifest that
lists them is written. Leftover staging folders are removed on the next export (the
run lock guarantees no other export is using them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from richkd_deploy.manifest import Manifest, now_iso, remove_manifest, write_manifest
from richkd_deploy.runs import fsync_dir


def staging_dir(export_dir: Path) -> Path:
    return export_dir / f".staging-{os.getpid()}"


def clean_staging(export_dir: Path) -> None:
    """Remove staging folders left by killed exports (we hold the run lock, so none is live)."""
    if export_dir.is_dir():
        for p in export_dir.glob(".staging-*"):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staging(export_dir: Path) -> Iterator[Path]:
    """A fresh staging folder for this process, removed afterwards whatever happens."""
    export_dir.mkdir(parents=True, exist_ok=True)
    clean_staging(export_dir)
    folder = staging_dir(export_dir)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def move_in(staging_folder: Path, export_dir: Path, names: Iterable[str]) -> None:
    for name in names:
        os.replace(staging_folder / name, export_dir / name)
    fsync_dir(export_dir)


def commit(export_dir: Path, staging_folder: Path, entries: list[dict[str, Any]],
           make_manifest: Callable[[list[dict[str, Any]]], Manifest]) -> Manifest:
    """Withdraw the old manifest, move the staged files in, delete files only the old
    export had, and write the new manifest last."""
    old = remove_manifest(export_dir)
    move_in(staging_folder, export_dir, [e["file"] for e in entries])
    new_files = {e["file"] for e in entries}
    if old is not None:
        for stale in old.get("artifacts", []):
            if stale["file"] not in new_files:
                with contextlib.suppress(OSError):
                    (export_dir / stale["file"]).unlink()
    return write_manifest(make_manifest(entries))


def append(manifest: Manifest, staging_folder: Path, entries: list[dict[str, Any]],
           **updates: Any) -> Manifest:
    """Add staged files to a committed export: the manifest never vouches for a file
    being replaced (its entry is withdrawn first), and lists the new ones only once
    they are in place. `updates` are top-level manifest keys to set with them."""
    names = {e["file"] for e in entries}
    kept = [a for a in manifest["artifacts"] if a["file"] not in names]
    if len(kept) != len(manifest["artifacts"]):
        manifest["artifacts"] = kept
        write_manifest(manifest)
    move_in(staging_folder, manifest.export_dir, [e["file"] for e in entries])
    manifest["artifacts"] = [*kept, *entries]
    manifest.update(updates)
    manifest["updated_at"] = now_iso()
    return write_manifest(manifest)
