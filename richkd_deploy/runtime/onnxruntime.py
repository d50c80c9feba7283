"""onnxruntime: the one place sessions are created, for export parity, validate and bench.

Two things every caller needs and is easy to forget:

* onnxruntime silently falls back to the CPU when a requested provider cannot load
  (and onnxruntime-gpu lists CUDA/TensorRT providers even where they cannot load), so
  after creating the session we check `session.get_providers()[0]` is the one asked
  for and fail loudly otherwise.
* Q/DQ INT8 models with symmetric int8 activations (what TensorRT needs) are only
  fused into QLinearConv on x86 when each Q->DQ pair is private to one consumer;
  ORT's common-subexpression elimination merges the duplicated pairs that
  `exporters.int8` writes for branch points, so it is disabled for those models
  (measured on resnet8x4: 10/10 convolutions fused instead of 4/10).
* An INT8 file runs as it is written: no graph rewrite at load time, so what validate
  measures is what a deployment that loads the file gets. The CPU-fast layout (each
  `DQ -> Relu -> Q` folded into the int8 kernel) is made by the exporter
  (`exporters.int8_fold`, `export.int8.layout`), not here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from richkd_deploy.deps import require
from richkd_deploy.errors import ArtifactError, MissingDependencyError
from richkd_deploy.runtime.base import Runtime

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

_INSTALL = {
    "cuda": 'pip uninstall onnxruntime && pip install "richkd-deploy[gpu]" on a machine with CUDA and cuDNN',
    "tensorrt": 'pip uninstall onnxruntime && pip install "richkd-deploy[gpu,trt]" on a machine with an NVIDIA GPU',
}

QDQ_DISABLED_OPTIMIZERS = ("CommonSubexpressionElimination",)


def is_qdq(path: str | Path) -> bool:
    """Cheap check for a Q/DQ model: our INT8 exporter stamps `precision=int8`."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a bad file fails properly when the session loads it
        return False
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("precision") == "int8":
        return True
    return any(n.op_type == "QuantizeLinear" for n in proto.graph.node)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def session_options(threads: int | None = None, optimized_model_path: str | Path | None = None) -> Any:
    """The SessionOptions every session of ours uses (kernel counting reuses them, so the
    counted graph is the one that runs)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    return opts


INT8_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul")
FLOAT_KERNELS = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "FusedMatMul", "NhwcFusedConv")


def kernel_counts(path: str | Path, disabled_optimizers: list[str] | None | bool = True) -> dict[str, Any]:
    """Which compute kernels onnxruntime's CPU provider really runs for `path`: the
    optimized graph is saved (`SessionOptions.optimized_model_filepath`) and its
    Conv/Gemm-like nodes counted as int8 (QLinearConv, QGemm, MatMulInteger, ...) or
    float (Conv, Gemm, ...). A Q/DQ file can look fully quantized and still run
    `DequantizeLinear -> Conv(float) -> QuantizeLinear` when a fusion's conditions
    are not met; this is how to see it. `disabled_optimizers=True` uses the same
    setting as `make_session`. Returns {"int8": n,
    "float": n, "ops": {op: n}, "float_nodes": [names], "float_activations": n (Relu/Clip
    nodes left in float), "quantize_ops": n (QuantizeLinear + DequantizeLinear left)}."""
    import collections
    import tempfile

    import onnx

    ort = require("onnxruntime")
    if disabled_optimizers is True:
        disabled_optimizers = list(QDQ_DISABLED_OPTIMIZERS) if is_qdq(path) else None
    with tempfile.TemporaryDirectory(prefix="richkd-ortopt-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        ort.InferenceSession(str(path), session_options(1, opt),
                             providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers or None)
        nodes = list(onnx.load(str(opt), load_external_data=False).graph.node)
    ops = collections.Counter(n.op_type for n in nodes)
    return {"int8": sum(ops[k] for k in INT8_KERNELS), "float": sum(ops[k] for k in FLOAT_KERNELS),
            "ops": {k: int(v) for k, v in sorted(ops.items()) if k in INT8_KERNELS or k in FLOAT_KERNELS},
            "float_nodes": [n.name or n.output[0] for n in nodes if n.op_type in FLOAT_KERNELS],
            "float_activations": sum(ops[k] for k in ("Relu", "Clip")),
            "quantize_ops": ops["QuantizeLinear"] + ops["DequantizeLinear"]}


def make_session(path: str | Path, provider: str = "cpu", threads: int | None = None) -> Any:
    """An InferenceSession on exactly `provider` ("cpu" | "cuda" | "tensorrt")."""
    ort = require("onnxruntime")
    if provider not in PROVIDERS:
        raise ArtifactError(f"unknown onnxruntime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise MissingDependencyError(
            f"this onnxruntime ({ort.__version__}, providers {', '.join(ort.get_available_providers())}) has no "
            f"{wanted}: {_INSTALL.get(provider, 'install onnxruntime')}")
    opts = session_options(threads)
    providers: list[Any] = [wanted] if provider == "cpu" else [wanted, "CPUExecutionProvider"]
    disabled = list(QDQ_DISABLED_OPTIMIZERS) if is_qdq(path) else None
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers, disabled_optimizers=disabled)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"onnxruntime cannot load {path} on {wanted}: {first}") from exc
    active = session.get_providers()
    if not active or active[0] != wanted:
        raise MissingDependencyError(
            f"onnxruntime could not start {wanted} for {path} (it fell back to {active[0] if active else 'nothing'}); "
            f"check the CUDA/cuDNN/TensorRT libraries, or {_INSTALL.get(provider, 'reinstall onnxruntime')}")
    return session


def run_session(session: Any, batch: Any) -> Any:
    name = session.get_inputs()[0].name
    return session.run(None, {name: batch})[0]


class OnnxRuntime(Runtime):
    """onnxruntime on exactly the asked provider ("cpu", "cuda" or "tensorrt")."""

    suffixes: ClassVar[tuple[str, ...]] = (".onnx",)

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None) -> None:
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

    @classmethod
    def open(cls, path: Path, provider: str | None = None, **kwargs: Any) -> OnnxRuntime:
        return cls(path, provider=provider or "cpu", **kwargs)

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
