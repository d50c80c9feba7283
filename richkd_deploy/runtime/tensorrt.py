"""TensorRT engines: load a sidecar-checked engine and run it.

The only runtime code importing `tensorrt`. The sidecar is checked against this
machine before anything is deserialised; batches smaller than the profile's minimum
are zero-padded (the base class) and bigger ones split at its maximum.
Buffers are torch CUDA tensors (no pycuda/cuda-python dependency); inference goes
through the name-based tensor API and `execute_async_v3`, which TensorRT 10 and 11
both provide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from richkd_deploy.deps import require
from richkd_deploy.errors import ArtifactError, MissingDependencyError
from richkd_deploy.runtime.base import Runtime
from richkd_deploy.runtime.engine_sidecar import RuntimeEnv, ShapeProfile, check_sidecar, profile_of, verify_engine_file


def running_env() -> RuntimeEnv:
    """The TensorRT version and GPU of this process (device = torch's current one)."""
    trt = require("tensorrt", "trt")
    if not torch.cuda.is_available():
        raise MissingDependencyError("TensorRT engines need an NVIDIA GPU with a working CUDA driver and none is "
                                     "visible here (torch.cuda.is_available() is False); run on a GPU machine")
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return RuntimeEnv(str(trt.__version__), torch.cuda.get_device_name(index), f"{major}.{minor}")


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    return torch.from_numpy(np.empty(0, dtype=trt.nptype(dtype))).dtype


class TrtEngine:
    """One deserialized engine with one execution context (not thread-safe)."""

    def __init__(self, trt: Any, runtime: Any, engine: Any, sidecar: dict[str, Any]) -> None:
        self._trt = trt
        self._runtime = runtime  # the runtime must outlive the engine
        self.engine = engine
        self.sidecar = sidecar
        self.context = engine.create_execution_context()
        if self.context is None:
            raise ArtifactError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) < 1:
            raise ArtifactError(f"engine has inputs {inputs} and outputs {outputs}; expected one image input")
        self.input_name = inputs[0]
        self.output_name = outputs[0]
        self.input_dtype = _torch_dtype(trt, engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(trt, engine.get_tensor_dtype(self.output_name))

    @property
    def profile(self) -> ShapeProfile:
        return profile_of(self.sidecar)

    def infer(self, batch: Any) -> Any:
        """Logits for a tensor `[N, C, H, W]` (moved to the GPU) with N inside the profile."""
        x = batch.to(device="cuda", dtype=self.input_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ArtifactError(f"input shape {tuple(x.shape)} is outside the engine's profile "
                                f"{self.sidecar['shape_range']}")
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(out_shape, dtype=self.output_dtype, device=x.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(x.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ArtifactError("TensorRT execution failed; run with a smaller batch or rebuild the engine")
        stream.synchronize()
        return out


def load_engine(engine_path: str | Path, env: RuntimeEnv | None = None) -> TrtEngine:
    """Check the sidecar against this machine, *then* deserialize. A missing, unreadable
    or altered engine is refused before TensorRT is even needed."""
    verify_engine_file(engine_path)
    trt = require("tensorrt", "trt")
    env = env or running_env()
    sidecar = check_sidecar(engine_path, env)
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise ArtifactError(f"TensorRT {env.tensorrt_version} could not deserialize {engine_path}; rebuild it on "
                            "this machine with richkd-deploy export --trt --force")
    return TrtEngine(trt, runtime, engine, sidecar)


class TensorRTRuntime(Runtime):
    """A TensorRT engine, loaded only after its sidecar matches this machine."""

    suffixes: ClassVar[tuple[str, ...]] = (".engine", ".plan")

    def __init__(self, engine_path: str | Path, env: Any = None) -> None:
        self.path = Path(engine_path)
        self.engine = load_engine(self.path, env)
        profile = self.engine.profile
        self.name = f"tensorrt-{self.engine.sidecar.get('precision', '')}".rstrip("-")
        self.max_batch = profile.max[0]
        self.min_batch = profile.min[0]
        self.input_shape = tuple(profile.max[1:])  # type: ignore[assignment]

    @classmethod
    def open(cls, path: Path, provider: str | None = None, **kwargs: Any) -> TensorRTRuntime:
        if provider not in (None, "tensorrt"):
            raise ArtifactError(f"{path.name} is a TensorRT engine; it runs only with provider 'tensorrt'")
        return cls(path, **kwargs)

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.infer(torch.from_numpy(batch)).float().cpu().numpy()

    def close(self) -> None:
        super().close()
        self.engine = None
