"""OpenVINO: Intel CPUs, GPUs and NPUs, a common edge target, running the ONNX artifacts.

OpenVINO picks its own inference precision per device: on a CPU with bf16 support it
runs an FP32 model in bf16 unless told otherwise, which would make validate judge a
model other than the one that ships. So the precision hint is always set explicitly
(`f32` unless asked), and what the compiled model reports it actually uses is recorded
(`details()`, in validate's results), so the gates apply to what really ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from richkd_deploy.deps import require
from richkd_deploy.errors import ArtifactError
from richkd_deploy.runtime.base import Runtime

DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
PRECISION_HINTS = ("f32", "f16", "bf16")


class OpenVINORuntime(Runtime):
    """An ONNX artifact compiled by OpenVINO for one device ("cpu", "gpu" or "npu")."""

    suffixes: ClassVar[tuple[str, ...]] = (".onnx",)

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None,
                 precision_hint: str = "f32") -> None:
        ov = require("openvino", "openvino")
        if provider not in DEVICES:
            raise ArtifactError(f"OpenVINO runs on {', '.join(DEVICES)}, not {provider!r}; pass --provider cpu, "
                                "gpu or npu")
        if precision_hint not in PRECISION_HINTS:
            raise ArtifactError(f"unknown OpenVINO precision hint {precision_hint!r}; use one of "
                                f"{', '.join(PRECISION_HINTS)}")
        self.path = Path(path)
        self.device = DEVICES[provider]
        self.name = f"openvino-{provider}"
        core = ov.Core()
        if self.device not in core.available_devices:
            raise ArtifactError(f"OpenVINO sees no {self.device} device here (it has {', '.join(core.available_devices)})")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision_hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(core.read_model(str(self.path)), self.device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ArtifactError(f"OpenVINO cannot load {self.path} on {self.device}: {first}") from None
        self.request = self.compiled.create_infer_request()
        self._version = ov.__version__
        self._hint = precision_hint
        actual = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self._actual = actual.get_type_name() if hasattr(actual, "get_type_name") else str(actual)
        self.name = f"openvino-{provider}-{self._actual}"  # the report's backend column says what ran
        shape = self.compiled.input(0).get_partial_shape()
        if shape.rank.is_static and len(shape) == 4 and all(d.is_static for d in list(shape)[1:]):
            self.input_shape = tuple(int(d.get_length()) for d in list(shape)[1:])  # type: ignore[assignment]
        out = self.compiled.output(0).get_partial_shape()
        if out.rank.is_static and len(out) == 2 and out[1].is_static:
            self.num_classes = int(out[1].get_length())

    @classmethod
    def open(cls, path: Path, provider: str | None = None, **kwargs: Any) -> OpenVINORuntime:
        return cls(path, provider=provider or "cpu", **kwargs)

    @property
    def inference_precision(self) -> str:
        """The precision the compiled model reports it runs in (e.g. "f32", "bf16")."""
        return self._actual

    def details(self) -> dict[str, Any]:
        return {"runtime": "openvino", "version": self._version, "device": self.device,
                "precision_hint": self._hint, "inference_precision": self._actual}

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        try:
            result = self.request.infer([batch])
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ArtifactError(f"{self.path.name}: OpenVINO cannot run it on images {list(batch.shape[1:])} "
                                f"({first})") from None
        return np.array(result[self.compiled.output(0)], dtype=np.float32, copy=True)

    def close(self) -> None:
        super().close()
        self.request = self.compiled = None
