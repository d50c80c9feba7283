"""Every way to run an artifact, behind one face (`Runtime.predict(batch) -> logits`).

Export's parity check and validate's and bench's measurements all run models through
here, so `exporters/` and `evaluate/` stand side by side on this layer and neither
imports the other. Adding a runtime is one file (a `Runtime` subclass with `open`,
`_predict_impl` and its `suffixes`) plus one line in `RUNTIMES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from richkd_deploy.errors import ArtifactError
from richkd_deploy.manifest import MANIFEST_NAME, Manifest, find_artifact, read_manifest, verify_artifact
from richkd_deploy.runs import sha256_file
from richkd_deploy.runtime.base import Runtime, split_batches
from richkd_deploy.runtime.onnxruntime import OnnxRuntime
from richkd_deploy.runtime.openvino import OpenVINORuntime
from richkd_deploy.runtime.predictions import agreement, predict_all, predictions, top1
from richkd_deploy.runtime.tensorrt import TensorRTRuntime
from richkd_deploy.runtime.torch_runtime import TorchRuntime

#: name -> runtime; for a file suffix, the first runtime listing it is the default
RUNTIMES: dict[str, type[Runtime]] = {
    "torch": TorchRuntime,
    "onnxruntime": OnnxRuntime,
    "tensorrt": TensorRTRuntime,
    "openvino": OpenVINORuntime,
}

__all__ = ["RUNTIMES", "OnnxRuntime", "OpenVINORuntime", "Runtime", "TensorRTRuntime", "TorchRuntime", "agreement", "create_runtime",
           "predict_all", "predictions", "runtime_for", "split_batches", "top1"]


def runtime_for(path: str | Path, runtime: str | None = None) -> type[Runtime]:
    """The runtime class that runs `path`: `runtime` by name, else the default for its suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if runtime is not None:
        cls = RUNTIMES.get(runtime)
        if cls is None:
            raise ArtifactError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        if suffix not in cls.suffixes:
            raise ArtifactError(f"{path.name}: the {runtime} runtime runs {', '.join(cls.suffixes)} files only")
        return cls
    for cls in RUNTIMES.values():
        if suffix in cls.suffixes:
            return cls
    known = sorted({s for c in RUNTIMES.values() for s in c.suffixes})
    raise ArtifactError(f"cannot tell how to run {path}: expected one of {', '.join(known)}")


def _manifest_for(path: Path, manifest: Any) -> Manifest | None:
    if manifest is False:
        return None
    if isinstance(manifest, Manifest):
        return manifest
    if isinstance(manifest, (str, Path)):
        return read_manifest(manifest)
    if isinstance(manifest, Mapping):
        raise TypeError("pass the manifest returned by read_manifest (it knows its folder), or a path")
    if (path.parent / MANIFEST_NAME).is_file():
        return read_manifest(path.parent)  # auto: an artifact next to a manifest is always checked
    return None


def _check_against_manifest(path: Path, manifest: Manifest | None) -> None:
    if manifest is None:
        return
    if find_artifact(manifest, path) is not None:
        verify_artifact(manifest, path)
    elif path.name == "student.pt" and manifest.get("student_sha256"):
        if sha256_file(path) != manifest["student_sha256"]:
            raise ArtifactError(f"{path} changed since the export was made from it; re-export with "
                                "richkd-deploy export --force")


def create_runtime(path: str | Path, provider: str | None = None, manifest: Any = None, runtime: str | None = None,
                   **kwargs: Any) -> Runtime:
    """A runtime for `path`, chosen by `runtime` or by suffix (.pt/.pth, .onnx, .engine/.plan).

    `manifest`: a Manifest, a run/export folder, None (use the manifest next to the
    file if there is one) or False (no check). When the manifest lists the file its
    sha256 is verified before anything is loaded; student.pt is checked against the
    manifest's `student_sha256`.
    """
    path = Path(path)
    cls = runtime_for(path, runtime)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    _check_against_manifest(path, _manifest_for(path, manifest))
    return cls.open(path, provider=provider, **kwargs)
