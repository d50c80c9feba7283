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
* With symmetric activations (zero point 0) the float `DequantizeLinear -> Relu ->
  QuantizeLinear` after each int8 kernel stays in the optimized graph: onnxruntime
  only drops a Relu whose QuantizeLinear clamps at zero by itself (zero point at the
  type's minimum). Those float chains were ~39% of resnet8x4's INT8 time at batch 64.
  For the CPU provider, `fold_relu_into_quantize` rewrites the graph in memory before
  the session loads it: `Q -> DQ -> Relu -> Q(s, 0, int8)` becomes `Q(s, 0, uint8)`,
  which onnxruntime fuses into the QLinearConv/QLinearAdd before it. The file on disk
  stays the TensorRT-shaped one (symmetric int8 Q/DQ), so TensorRT and onnxruntime
  run the same artifact; see that function for the (small) numerical difference.
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


def _int8_zero(inits: dict[str, Any], node: Any) -> bool:
    """True when a Q/DQ node's zero point is an int8 initializer of zeros (symmetric int8)."""
    from onnx import numpy_helper

    if len(node.input) < 3 or node.input[2] not in inits:
        return False
    zp = numpy_helper.to_array(inits[node.input[2]])
    return zp.dtype == np.int8 and not zp.any()


def fold_relu_into_quantize(model: Any) -> int:
    """Rewrite, in place, each `X -> Q(a) -> DQ(a) -> Relu -> Q(s, 0, int8) -> DQ(s)...`
    into `X -> Q(s, 0, uint8) -> DQ(s, 0, uint8)...` so that onnxruntime's CPU provider
    fuses the Relu into the int8 kernel that produces X (a QLinearConv or QLinearAdd);
    returns how many Relus were folded. A uint8 zero point of 0 clamps negatives to zero
    exactly as the Relu did. When the Relu output feeds several Q->DQ pairs (the
    `_dedicated` pairs of `exporters.int8` at a branch point), the first Q serves every
    DQ: X may only have one consumer to fuse, and uint8 pairs need no S8->U8 rewrite
    (the reason for the private pairs).

    Not bit-identical to the file, and closer to FP32 where it differs: one rounding at
    `s` instead of two (at `a`, then at `s`), and the upper clamp at 255*s instead of
    127*s (values beyond the calibrated range are kept, not clipped). Measured on a
    resnet8 trained on Fashion-MNIST (10,000 test images): the folded session and the file
    read as is agree on every top-1 (INT8 76.50% vs FP32 77.12% for both). Only Relu is
    folded (not Clip/Relu6)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def uint8_zero(like: str) -> str:
        name = f"{like}_uint8"
        if name not in inits:
            shape = numpy_helper.to_array(inits[like]).shape
            inits[name] = numpy_helper.from_array(np.zeros(shape, np.uint8), name)
            graph.initializer.append(inits[name])
        return name

    removed: set[int] = set()
    folded = 0
    for relu in list(graph.node):
        if relu.op_type != "Relu" or relu.output[0] in outputs:
            continue
        dq = producer.get(relu.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.output[0] in outputs or dq.output[0] in outputs \
                or len(consumers.get(q.output[0], [])) != 1 or len(consumers.get(dq.output[0], [])) != 1:
            continue
        quants = consumers.get(relu.output[0], [])
        if not quants or any(n.op_type != "QuantizeLinear" or not _int8_zero(inits, n) or n.output[0] in outputs
                             for n in quants):
            continue
        dqs = [d for n in quants for d in consumers.get(n.output[0], [])]
        if any(d.op_type != "DequantizeLinear" or not _int8_zero(inits, d) for d in dqs):
            continue
        first = quants[0]
        first.input[0] = q.input[0]
        first.input[2] = uint8_zero(first.input[2])
        for d in dqs:
            d.input[0], d.input[1], d.input[2] = first.output[0], first.input[1], first.input[2]
        removed.update(id(n) for n in (q, dq, relu, *quants[1:]))
        folded += 1
    if folded:
        keep = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(keep)
    return folded


def session_model(path: str | Path, provider: str = "cpu", fold_relu: bool = True) -> tuple[str | bytes, int]:
    """What the session loads: the path itself, or for a symmetric Q/DQ INT8 file on the
    CPU provider the bytes of its `fold_relu_into_quantize` rewrite; and how many Relus
    were folded. Other providers get the file as is (TensorRT needs int8 zero points)."""
    if not fold_relu or provider != "cpu" or not is_qdq(path):
        return str(path), 0
    import onnx

    model = onnx.load(str(path))
    folded = fold_relu_into_quantize(model)
    return (model.SerializeToString(), folded) if folded else (str(path), 0)


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


def kernel_counts(path: str | Path, disabled_optimizers: list[str] | None | bool = True,
                  fold_relu: bool = True) -> dict[str, Any]:
    """Which compute kernels onnxruntime's CPU provider really runs for `path`: the
    optimized graph is saved (`SessionOptions.optimized_model_filepath`) and its
    Conv/Gemm-like nodes counted as int8 (QLinearConv, QGemm, MatMulInteger, ...) or
    float (Conv, Gemm, ...). A Q/DQ file can look fully quantized and still run
    `DequantizeLinear -> Conv(float) -> QuantizeLinear` when a fusion's conditions
    are not met; this is how to see it. `disabled_optimizers=True` uses the same
    setting as `make_session`, and `fold_relu` its CPU rewrite. Returns {"int8": n,
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
        ort.InferenceSession(session_model(path, "cpu", fold_relu)[0], session_options(1, opt),
                             providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers or None)
        nodes = list(onnx.load(str(opt), load_external_data=False).graph.node)
    ops = collections.Counter(n.op_type for n in nodes)
    return {"int8": sum(ops[k] for k in INT8_KERNELS), "float": sum(ops[k] for k in FLOAT_KERNELS),
            "ops": {k: int(v) for k, v in sorted(ops.items()) if k in INT8_KERNELS or k in FLOAT_KERNELS},
            "float_nodes": [n.name or n.output[0] for n in nodes if n.op_type in FLOAT_KERNELS],
            "float_activations": sum(ops[k] for k in ("Relu", "Clip")),
            "quantize_ops": ops["QuantizeLinear"] + ops["DequantizeLinear"]}


def make_session(path: str | Path, provider: str = "cpu", threads: int | None = None, fold_relu: bool = True) -> Any:
    """An InferenceSession on exactly `provider` ("cpu" | "cuda" | "tensorrt"); a
    symmetric INT8 file on the CPU gets `fold_relu_into_quantize` unless `fold_relu`
    is False (the benchmark's "file as is" row)."""
    return _session(path, provider, threads, fold_relu)[0]


def _session(path: str | Path, provider: str, threads: int | None, fold_relu: bool = True) -> tuple[Any, int]:
    """`make_session`, and how many Relus were folded."""
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
        source, folded = session_model(path, provider, fold_relu)
        session = ort.InferenceSession(source, opts, providers=providers, disabled_optimizers=disabled)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"onnxruntime cannot load {path} on {wanted}: {first}") from exc
    active = session.get_providers()
    if not active or active[0] != wanted:
        raise MissingDependencyError(
            f"onnxruntime could not start {wanted} for {path} (it fell back to {active[0] if active else 'nothing'}); "
            f"check the CUDA/cuDNN/TensorRT libraries, or {_INSTALL.get(provider, 'reinstall onnxruntime')}")
    return session, folded


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
        self.session, self.relus_folded = _session(self.path, provider, threads)
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

    def details(self) -> dict[str, Any]:
        """For an INT8 file on the CPU: how many DQ->Relu->Q chains were folded into the
        int8 kernels (`fold_relu_into_quantize`), since what runs differs slightly from the file."""
        return {"relus_folded_into_int8_kernels": self.relus_folded} if self.relus_folded else {}

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
