"""Backends: one small face (`predict(batch) -> logits`) for every way to run a model.

Polygraphy-style: the base class owns the public `predict`, the input checks, batch
splitting and the context-manager lifecycle; subclasses implement `_predict_impl`
only. The harness and the metrics therefore never branch on the backend type, and a
metric computed on PyTorch, onnxruntime or TensorRT means the same thing.

`create_backend` picks the backend from the file suffix and, when the export
manifest lists the file, checks its sha256 first: an artifact changed after export
is refused, not silently evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from richkd_deploy.errors import ArtifactError, CheckpointError


def _split(n: int, max_batch: int) -> list[slice]:
    return [slice(i, min(i + max_batch, n)) for i in range(0, n, max_batch)]


class Backend:
    """Base class: validates inputs, splits batches, manages open/close."""

    name: str = "backend"
    #: largest batch one call may take (a TensorRT profile's max); None = unlimited
    max_batch: int | None = None
    #: smallest batch (a TensorRT profile's min); smaller batches are zero-padded
    min_batch: int = 1
    #: (C, H, W) when the artifact pins it
    input_shape: tuple[int, int, int] | None = None
    #: number of output classes when known
    num_classes: int | None = None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Logits `[N, K]` float32 for a float32 `[N, C, H, W]` batch of any size."""
        if self._closed:
            raise ArtifactError(f"{self.name} backend is closed")
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"{self.name}.predict expects a numpy array, got {type(batch).__name__}")
        if batch.ndim != 4 or not np.issubdtype(batch.dtype, np.floating):
            raise ArtifactError(f"{self.name}: expected a float32 batch [N, C, H, W], got {batch.dtype} "
                                f"{list(batch.shape)}")
        if self.input_shape is not None and tuple(batch.shape[1:]) != tuple(self.input_shape):
            path = getattr(self, "path", None)
            what = f"{Path(path).name} ({self.name})" if path is not None else self.name
            raise ArtifactError(f"{what}: images are {list(batch.shape[1:])} but the model takes "
                                f"{list(self.input_shape)}; check data.input_size, or use a model made for this data")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, self.num_classes or 0), dtype=np.float32)
        step = self.max_batch or n
        outs = [self._run(batch[sl]) for sl in _split(n, step)]
        out = np.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]
        if out.ndim != 2 or out.shape[0] != n:
            raise ArtifactError(f"{self.name}: expected logits [N, K], got {list(out.shape)}")
        return np.asarray(out, dtype=np.float32)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        n = chunk.shape[0]
        if n < self.min_batch:
            pad = np.zeros((self.min_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
            return self._predict_impl(np.concatenate([chunk, pad]))[:n]
        return self._predict_impl(chunk)

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # lifecycle -----------------------------------------------------------------------
    _closed = False

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class TorchBackend(Backend):
    """PyTorch eager, from an nn.Module or a checkpoint (student.pt or a teacher)."""

    def __init__(self, model: Any, device: str = "cpu", arch: str | None = None, num_classes: int | None = None,
                 name: str = "torch") -> None:
        import torch

        self.name = name
        self.device = torch.device(device)
        if isinstance(model, (str, Path)):
            model, info = load_torch_checkpoint(Path(model), arch=arch, num_classes=num_classes)
            size = info.get("input_size")
            if size:
                self.input_shape = (int(info.get("channels", 3)), int(size), int(size))
            self.num_classes = info.get("num_classes")
        self.model = model.eval().to(self.device)

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(batch).to(self.device))
        if isinstance(out, (tuple, list)):
            out = out[0]  # (logits, features) models
        return out.float().cpu().numpy()


def load_torch_checkpoint(path: Path, arch: str | None = None,
                          num_classes: int | None = None) -> tuple[Any, dict[str, Any]]:
    """A logits-only module from student.pt, a teacher checkpoint (`{"arch", "model"}`)
    or a bare state dict plus `arch` (mdistiller's `{"model": state_dict}` too)."""
    from richkd_deploy import models

    payload = models.load_checkpoint(path)  # weights_only, one-line errors
    state = payload.get("model", payload)
    arch = payload.get("arch") or arch
    if not arch:
        raise CheckpointError(f"{path} does not say its architecture; pass arch=")
    if num_classes is None:
        num_classes = payload.get("num_classes")
    if num_classes is None:
        heads = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
        if not heads:
            raise CheckpointError(f"{path}: cannot infer the number of classes; pass num_classes=")
        num_classes = int(heads[-1].shape[0])
    model = models.create_model(arch, num_classes=int(num_classes))
    models.load_state_dict_strict(model, state, source=str(path))
    info = {k: v for k, v in payload.items() if k != "model"} if "model" in payload else {}
    info["num_classes"] = int(num_classes)
    return models.export_view(model), info


class OnnxRuntimeBackend(Backend):
    """onnxruntime on exactly the asked provider ("cpu", "cuda" or "tensorrt")."""

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None) -> None:
        from exporters.ort_session import make_session

        self.path = Path(path)
        self.provider = provider
        self.name = f"onnxruntime-{provider}"
        self.session = make_session(self.path, provider, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        dims = list(inp.shape)
        if len(dims) == 4 and all(isinstance(d, int) for d in dims[1:]):
            self.input_shape = (dims[1], dims[2], dims[3])
        if isinstance(dims[0], int) and dims[0] > 0:
            self.max_batch = self.min_batch = dims[0]  # a fixed-batch model: feed it exactly that
        out = self.session.get_outputs()[0].shape
        if len(out) == 2 and isinstance(out[1], int):
            self.num_classes = out[1]

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(None, {self.input_name: batch})[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ArtifactError(f"{self.path.name}: onnxruntime cannot run it on images {list(batch.shape[1:])} "
                                f"({first}); the model does not take this dataset's input, check data.input_size "
                                "or re-export it") from None

    def close(self) -> None:
        super().close()
        self.session = None


class TensorRTBackend(Backend):
    """A TensorRT engine, loaded only after its sidecar matches this machine."""

    def __init__(self, engine_path: str | Path, env: Any = None) -> None:
        from exporters.tensorrt_runtime import load_engine

        self.path = Path(engine_path)
        self.engine = load_engine(self.path, env)
        profile = self.engine.profile
        self.name = f"tensorrt-{self.engine.sidecar.get('precision', '')}".rstrip("-")
        self.max_batch = profile.max[0]
        self.min_batch = profile.min[0]
        self.input_shape = tuple(profile.max[1:])  # type: ignore[assignment]

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        out = self.engine.infer(torch.from_numpy(batch).cuda())
        return out.float().cpu().numpy()

    def close(self) -> None:
        super().close()
        self.engine = None


SUFFIXES = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}


def _manifest_for(path: Path, manifest: Any) -> Any:
    from richkd_deploy.manifest import MANIFEST_NAME, Manifest, read_manifest

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


def create_backend(path: str | Path, provider: str | None = None, manifest: Any = None, **kwargs: Any) -> Backend:
    """A backend for `path` chosen by suffix (.pt/.pth, .onnx, .engine/.plan).

    `manifest`: a Manifest, a run/export folder, None (use the manifest next to the
    file if there is one) or False (no check). When the manifest lists the file its
    sha256 is verified before anything is loaded; student.pt is checked against the
    manifest's `student_sha256`.
    """
    from richkd_deploy.manifest import find_artifact, verify_artifact
    from richkd_deploy.runs import sha256_file

    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ArtifactError(f"cannot tell how to run {path}: expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    m = _manifest_for(path, manifest)
    if m is not None:
        if find_artifact(m, path) is not None:
            verify_artifact(m, path)
        elif kind == "torch" and m.get("student_sha256") and path.name == "student.pt":
            if sha256_file(path) != m["student_sha256"]:
                raise ArtifactError(f"{path} changed since the export was made from it; re-export with "
                                    "richkd-deploy export --force")
    if kind == "torch":
        return TorchBackend(path, **kwargs)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(path, provider=provider or "cpu", **kwargs)
    if provider not in (None, "tensorrt"):
        raise ArtifactError(f"{path.name} is a TensorRT engine; it runs only with provider 'tensorrt'")
    return TensorRTBackend(path, **kwargs)
