"""ONNX FP32 -> ONNX INT8 in Q/DQ form, calibrated on training images.

The settings are the ones TensorRT's explicit quantization accepts, so the same file
feeds onnxruntime on the CPU and `trtexec`/our builder on the GPU:

* Q/DQ format (QuantizeLinear/DequantizeLinear around float ops), not QOperator;
* int8 activations *and* weights, both symmetric (zero point 0): TensorRT rejects
  uint8 Q/DQ and non-zero zero points;
* per-channel weight scales on the output-channel axis, weights in 7 bits
  (`reduce_range`, values -64..63, still int8 with zero point 0): onnxruntime runs
  int8 activations on x86 CPUs without VNNI as uint8 shifted by 128 through
  VPMADDUBSW, whose int16 pair sums saturate with full-range weights. Measured on a
  trained CNN on Fashion-MNIST: full-range weights agreed with FP32 on 76% of test
  images under onnxruntime's optimized CPU path (98% with optimizations off, i.e.
  the graph itself was fine); 7-bit weights agree on 98% on both paths;
* biases left in float (`QuantizeBias: False`): TensorRT does not take int32 bias
  DequantizeLinear nodes; onnxruntime quantizes them itself at load time;
* calibration over training images (`export.int8`: MinMax by default, or onnxruntime's
  Entropy / Percentile calibrators; `export.calibration_images` images);
* the output logits stay in float: the op that produces the graph output (the
  classifier's Gemm) computes in int8 but returns float, with no Q->DQ pair after
  it (onnxruntime's `OpTypesToExcludeOutputQuantization`). A quantized logit has a
  coarse step (0.0835 on the demo model), so distinct top scores collapse into
  ties that every runtime breaks towards the lowest class index: 190 of 10,000
  demo test images had a tied top score. The option works per op type, so every
  op of the classifier's type keeps a float output; in our CNNs the classifier is
  the only Gemm, and a quantized consumer re-quantizes its input anyway.
  `float_output_check` refuses a graph whose output is still a DequantizeLinear.
  Measured on a resnet8 trained on 6,000 Fashion-MNIST images (10,000 test images):
  tied top scores 205 -> 0, top-1 agreement with FP32 0.9663 -> 0.9644, top-1 0.7648
  -> 0.7650 (the old tie-counting metric had reported 0.7728 for the quantized logits).

Every Gemm's bias is split off into a float `Add` before quantization. onnxruntime fuses
`DQ -> Gemm -> (no Q)` into a QGemm with float output only when every Gemm input,
bias included, comes from a DequantizeLinear; its WeightBiasQuantization pass, which
quantizes a float bias at load time, only does so when the Gemm's output leads to a
QuantizeLinear, which the float logits never do. So the classifier ran as a float Gemm
(measured: resnet8, onnxruntime 1.32, 9/9 QLinearConv but Gemm float). With the bias
in an Add, the Gemm has two DQ inputs and runs as QGemm; the Add is excluded from
quantization so the logits stay float.

After quantization every Q->DQ pair that feeds several consumers is duplicated so
each consumer has a private pair. This changes no value; it lets onnxruntime's x86
S8->U8 rewrite (which only touches single-consumer pairs) turn every Conv into a
QLinearConv. See richkd_deploy.runtime.onnxruntime for the matching session setting
(common-subexpression elimination is disabled for Q/DQ models, else it merges the pairs
again), and `kernel_counts` there to count what really runs as int8.

Two layouts of the same quantization (`export.int8.layout`): `tensorrt`, the graph described
above, symmetric int8 Q/DQ everywhere; and `cpu`, the same graph with each
`DQ -> Relu -> Q` after an int8 kernel folded into a uint8 QuantizeLinear
(`exporters.int8_fold`), which onnxruntime's CPU provider fuses into the kernel and
TensorRT rejects. `auto` writes `tensorrt` when the export builds engines (`--trt`) and
`cpu` otherwise. Either way the rewrite is in the file, so the artifact validate measures is
the one a deployment loads. Measured on resnet8x4, batch 64, 1 thread, interleaved in one
run (INT8 over FP32 throughput): 2.4-2.5x for the tensorrt layout on onnxruntime, 3.7-3.9x
for the cpu layout; top-1 on Fashion-MNIST (10,000 test images, a briefly trained
resnet8x4) 72.36% (cpu layout) vs 72.99% FP32. Asymmetric activations (`symmetric_activations: false`)
are no longer the faster choice on onnxruntime: at the residual branch points their
conv output feeds two Q nodes and stays float (resnet8: 8 of 9 QLinearConv).
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.int8_fold import fold_relu_into_quantize
from exporters.metadata import set_metadata
from richkd_deploy.deps import require
from richkd_deploy.errors import ArtifactError
from richkd_deploy.runs import atomic_write_bytes

QUANT_SETTINGS: dict[str, Any] = {
    "format": "QDQ",
    "activation_type": "QInt8",
    "weight_type": "QInt8",
    "per_channel": True,
    "weight_bits": 7,
    "calibration": "MinMax",
    "activation_symmetric": True,
    "weight_symmetric": True,
    "quantize_bias": False,
    "float_output": True,
}


METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
LAYER_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
BIAS_SUFFIX = "_without_bias"  # split_gemm_bias: the Gemm's output before its bias Add


@dataclass(frozen=True)
class Int8Options:
    """How one INT8 graph is made: the calibration method (onnxruntime's calibrators),
    per-channel weights, symmetric activations (TensorRT needs them; asymmetric ones let
    onnxruntime drop the float Relu between int8 kernels), and the Conv/Gemm nodes of
    the preprocessed FP32 graph (`quantizable_layers`) kept in float. `fold_relu`: the
    CPU layout (`exporters.int8_fold`), each Relu after an int8 kernel folded into a uint8
    QuantizeLinear; fast on onnxruntime's CPU provider, refused by TensorRT."""

    method: str = "minmax"
    per_channel: bool = True
    symmetric_activations: bool = True
    keep_float: tuple[str, ...] = field(default_factory=tuple)
    quantize_only: tuple[str, ...] = field(default_factory=tuple)  # sensitivity: these layers alone
    fold_relu: bool = False

    def record(self, images: int) -> dict[str, Any]:
        """What the manifest and the file's metadata say about the quantization."""
        return {**QUANT_SETTINGS, "calibration": METHODS[self.method], "per_channel": self.per_channel,
                "activation_symmetric": self.symmetric_activations, "calibration_images": int(images),
                "layers_in_float": list(self.keep_float), "layout": "cpu" if self.fold_relu else "tensorrt",
                "tensorrt_compatible": self.symmetric_activations and not self.fold_relu}


class _BatchReader:
    """onnxruntime CalibrationDataReader over an iterable of float32 NCHW arrays."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self._it: Iterator[np.ndarray] = iter(batches)
        self.images = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ArtifactError(f"calibration batches must be NCHW float32 arrays, got shape {batch.shape}")
        self.images += batch.shape[0]
        return {self.input_name: batch}

    def rewind(self) -> None:  # part of the reader interface; one pass is all MinMax needs
        pass


def dedicate_qdq_pairs(model: Any) -> int:
    """Give every consumer of a shared activation DQ its own Q->DQ pair; returns how
    many pairs were added. Pure graph surgery on an onnx.ModelProto.

    Each added pair reads its own copy of the scale, nudged up by k float32 ULPs for the
    k-th copy (a relative change of ~1e-7 per step, far below the int8 step): otherwise
    onnxruntime's ConstantSharing + CommonSubexpressionElimination merge the identical
    pairs back into one shared pair, and the convolutions behind it stay float in any
    session that does not disable CSE (measured: resnet8, 4 of 9 QLinearConv)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def scale_copy(name: str, k: int) -> str:
        new = f"{name}_dedicated{k}"
        if new not in inits and name in inits:
            value = numpy_helper.to_array(inits[name]).astype(np.float32)
            for _ in range(k):
                value = np.nextafter(value, np.float32(np.inf), dtype=np.float32)
            inits[new] = numpy_helper.from_array(value, new)
            graph.initializer.append(inits[new])
        return new if name in inits else name

    new_nodes: list[Any] = []
    added = 0
    for node in graph.node:
        new_nodes.append(node)
        if node.op_type != "DequantizeLinear":
            continue
        q = producer.get(node.input[0])
        users = consumers[node.output[0]]
        if q is None or q.op_type != "QuantizeLinear" or len(users) < 2 or len(consumers[q.output[0]]) != 1:
            continue
        for k, user in enumerate(users[1:], start=1):
            q_out, dq_out = f"{q.output[0]}_dedicated{k}", f"{node.output[0]}_dedicated{k}"
            scale = scale_copy(q.input[1], k)
            q2 = helper.make_node("QuantizeLinear", [q.input[0], scale, *q.input[2:]], [q_out],
                                  name=f"{q.name}_dedicated{k}")
            q2.attribute.extend(q.attribute)
            dq2 = helper.make_node("DequantizeLinear", [q_out, scale, *node.input[2:]], [dq_out],
                                   name=f"{node.name}_dedicated{k}")
            dq2.attribute.extend(node.attribute)
            new_nodes.extend([q2, dq2])
            for i, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[i] = dq_out
            added += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return added


def output_producer_types(model: Any) -> list[str]:
    """Op types of the nodes that produce the graph outputs (the classifier, for our models)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return sorted({producer[o.name].op_type for o in model.graph.output if o.name in producer})


def float_output_check(model: Any) -> None:
    """Raise ArtifactError when a graph output comes out of a Q/DQ pair instead of a float op."""
    producer = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        node = producer.get(out.name)
        if node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            raise ArtifactError(f"INT8 graph output {out.name!r} is quantized ({node.op_type} {node.name!r}); "
                                "the logits must stay float (this is a bug in exporters.int8, please report it)")


def preprocess(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Shape inference + constant folding/BN fusion (as onnxruntime recommends before static
    quantization), then every Gemm's bias split into a float Add (see the module docstring).
    The node names of this graph are the layer names of sensitivity and fallback."""
    onnx = require("onnx")
    require("onnxruntime", "cpu")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    quant_pre_process(str(onnx_path), str(out_path), skip_symbolic_shape=False)
    model = onnx.load(str(out_path))
    if split_gemm_bias(model):
        atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def split_gemm_bias(model: Any) -> list[str]:
    """Rewrite each `Gemm(A, B, C)` (beta 1) as `Gemm(A, B) -> Add(C)`; returns the Add node names."""
    from onnx import helper

    graph = model.graph
    new_nodes, adds = [], []
    for node in graph.node:
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        if node.op_type != "Gemm" or len(node.input) < 3 or not node.input[2] or beta != 1.0:
            new_nodes.append(node)
            continue
        bias, out = node.input[2], node.output[0]
        raw = f"{out}{BIAS_SUFFIX}"
        del node.input[2]
        node.output[0] = raw
        add = helper.make_node("Add", [raw, bias], [out], name=f"{node.name or out}_bias")
        new_nodes.extend([node, add])
        adds.append(add.name)
    if adds:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return adds


def quantizable_layers(model: Any) -> list[str]:
    """Names of the Conv/Gemm-like nodes of a (preprocessed) graph, in graph order."""
    return [n.name for n in model.graph.node if n.op_type in LAYER_OPS]


def module_name(node_name: str) -> str:
    """Torch module path of an exported node name: '/model/layer1/layer1.0/conv1/Conv' ->
    'model.layer1.0.conv1' (torch.onnx names nodes by their module scope)."""
    parts = [p for p in node_name.split("/") if p][:-1]
    out: list[str] = []
    for p in parts:
        if out and p.startswith(out[-1] + "."):  # '/layer1/layer1.0/' is the scope of module layer1.0
            out[-1] = p
        else:
            out.append(p)
    return ".".join(out) or node_name


def _supports_calibration_cache() -> bool:
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantize_int8(onnx_path: str | Path, calibration_batches: Iterable[np.ndarray], out_path: str | Path,
                  options: Int8Options | None = None, preprocessed: str | Path | None = None,
                  calibration_cache: str | Path | None = None) -> Path:
    """Write a Q/DQ INT8 copy of `onnx_path` to `out_path` (atomically).

    `calibration_batches` yields float32 NCHW arrays already through the eval
    transform (training images, so the test set stays unseen). `preprocessed` reuses
    a `preprocess` output (the fallback loop quantizes the same graph many times), and
    `calibration_cache` the calibrated ranges of an earlier call with the same graph,
    images and method (onnxruntime >= 1.32's `calibration_cache_path`; older versions
    calibrate again): the sensitivity and fallback graphs then cost no calibration pass.
    """
    onnx = require("onnx")
    require("onnxruntime", "cpu")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    options = options or Int8Options()
    if options.method not in METHODS:
        raise ArtifactError(f"unknown calibration method {options.method!r}; use one of {', '.join(METHODS)}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    source = onnx.load(str(onnx_path), load_external_data=False)
    input_name = source.graph.input[0].name
    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None or len(first) == 0:
        raise ArtifactError("no calibration images: the training set is empty; check the data settings "
                            "and export.calibration_images")
    reader = _BatchReader(input_name, itertools.chain([first], batches))
    with tempfile.TemporaryDirectory(prefix="richkd-int8-") as tmp:
        pre = Path(preprocessed) if preprocessed else preprocess(onnx_path, Path(tmp) / "pre.onnx")
        qdq = Path(tmp) / "qdq.onnx"
        pre_model = onnx.load(str(pre), load_external_data=False)
        unknown = sorted((set(options.keep_float) | set(options.quantize_only)) - set(quantizable_layers(pre_model)))
        if unknown:
            raise ArtifactError(f"layers to keep in float not in the graph: {', '.join(unknown)}")
        # the logits stay float: no Gemm output is quantized, nor the Adds that carry the split-off biases
        bias_adds = [n.name for n in pre_model.graph.node
                     if n.op_type == "Add" and n.input and n.input[0].endswith(BIAS_SUFFIX)]
        keep_float_types = sorted({"Gemm"} | set(output_producer_types(source)) - {"Add"})
        cache_arg = {"calibration_cache_path": str(calibration_cache)} \
            if calibration_cache is not None and _supports_calibration_cache() else {}
        # the Entropy/Percentile calibrators print progress to stdout: keep the CLI's output (and --quiet) clean
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(pre), str(qdq), reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=options.per_channel,
                reduce_range=True,
                calibrate_method=getattr(CalibrationMethod, METHODS[options.method]),
                nodes_to_quantize=list(options.quantize_only) or None,
                nodes_to_exclude=[*bias_adds, *options.keep_float],
                **cache_arg,
                extra_options={
                    "ActivationSymmetric": options.symmetric_activations,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    "QDQKeepRemovableActivations": False,
                    "OpTypesToExcludeOutputQuantization": keep_float_types,
                },
            )
        model = onnx.load(str(qdq))
    while reader.get_next() is not None:  # a cached calibration read no images: count them for the record
        pass
    float_output_check(model)
    dedicate_qdq_pairs(model)
    record = options.record(reader.images)
    if options.fold_relu:
        record["relus_folded"] = fold_relu_into_quantize(model)
    props = {p.key: p.value for p in source.metadata_props}
    props.update({"precision": "int8", "source": onnx_path.name, "quantization": json.dumps(record)})
    set_metadata(model, props)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"quantized model fails onnx.checker: {exc}") from exc
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path
