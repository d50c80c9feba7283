"""A minimal TensorRT runtime: load a sidecar-checked engine and run torch CUDA tensors.

Kept tiny and separate so that it is the only runtime code importing `tensorrt`.
Buffers are torch CUDA tensors (no pycuda/cuda-python dependency); inference goes
through the name-based tensor API and `execute_async_v3`, which TensorRT 10 and 11
both provide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters.deps import require
from exporters.engine_sidecar import RuntimeEnv, check_sidecar, profile_of, verify_engine_file
from exporters.trt_plan import ShapeProfile
from richkd_deploy.errors import ArtifactError, MissingDependencyError


def running_env() -> RuntimeEnv:
    """The TensorRT version and GPU of this process (device = torch's current one)."""
    trt = require("tensorrt", "trt")
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError("TensorRT engines need an NVIDIA GPU with a working CUDA driver and none is "
                                     "visible here (torch.cuda.is_available() is False); run on a GPU machine")
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return RuntimeEnv(str(trt.__version__), torch.cuda.get_device_name(index), f"{major}.{minor}")


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import numpy as np
    import torch

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
        """Logits for a CUDA tensor `[N, C, H, W]` with N inside the profile."""
        import torch

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
