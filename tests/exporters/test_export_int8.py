"""ONNX -> Q/DQ INT8 (TensorRT-shaped) and ONNX -> FP16 (float32 I/O)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporters.fp16 import convert_fp16
from exporters.int8 import quantize_int8
from exporters.metadata import read_metadata
from exporters.onnx_fp32 import export_onnx
from richkd_deploy.errors import ArtifactError
from richkd_deploy.runtime import agreement, top1
from richkd_deploy.runtime.onnxruntime import make_session, run_session


@pytest.fixture(scope="module")
def exported(trained_tiny: torch.nn.Module, fmnist: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(trained_tiny, d / "model.onnx", (3, 32, 32), 17, {"recipe_hash": "abc"})
    xtr, _ = fmnist["train"]
    calib = (xtr[i:i + 64] for i in range(0, 256, 64))
    int8 = quantize_int8(fp32, calib, d / "model.int8.onnx")
    return {"fp32": fp32, "int8": int8, "dir": d}


def test_qdq_model_runs_and_agrees_with_fp32_on_real_images(exported: dict, fmnist: dict) -> None:
    xte, yte = fmnist["test"]
    fp32 = run_session(make_session(exported["fp32"]), xte)
    int8 = run_session(make_session(exported["int8"]), xte)
    assert int8.shape == fp32.shape and int8.dtype == np.float32
    assert agreement(fp32, int8) >= 0.97
    assert top1(int8, yte) >= top1(fp32, yte) - 0.02
    assert top1(fp32, yte) > 0.5  # the model learned something: the agreement test is not trivial


def test_qdq_model_is_what_tensorrt_accepts(exported: dict) -> None:
    model = onnx.load(str(exported["int8"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{node.name}: TensorRT needs int8 zero point 0"
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].dtype == np.int8, "no int32 bias DequantizeLinear (TensorRT rejects it)"
    conv_weight_scales = [inits[n.input[1]] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits
                          and inits[n.input[0]].ndim == 4]
    assert conv_weight_scales and all(s.size > 1 for s in conv_weight_scales)  # per-channel
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = read_metadata(model)
    assert meta["precision"] == "int8" and meta["recipe_hash"] == "abc"
    assert meta["quantization"]["activation_type"] == "QInt8" and meta["quantization"]["calibration_images"] == 256


def test_onnxruntime_fuses_every_conv(exported: dict, tmp_path: Path) -> None:
    """The dedicated Q/DQ pairs + session settings let onnxruntime's x86 path run
    every convolution as QLinearConv (else INT8 ends up slower than FP32)."""
    import onnxruntime as ort

    from richkd_deploy.runtime.onnxruntime import QDQ_DISABLED_OPTIMIZERS

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(exported["int8"]), opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(QDQ_DISABLED_OPTIMIZERS))
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["Conv"] == 0 and ops["QLinearConv"] == 4, ops


def test_empty_calibration_is_a_clear_error(exported: dict, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no calibration images"):
        quantize_int8(exported["fp32"], iter(()), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_fp16_keeps_float32_io_and_runs(exported: dict, fmnist: dict) -> None:
    path = convert_fp16(exported["fp32"], exported["dir"] / "model.fp16.onnx")
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert read_metadata(model)["precision"] == "fp16"
    xte, _ = fmnist["test"]
    fp32 = run_session(make_session(exported["fp32"]), xte[:128])
    fp16 = run_session(make_session(path), xte[:128])
    assert fp16.dtype == np.float32
    assert np.abs(fp16 - fp32).max() < 0.05 and agreement(fp32, fp16) >= 0.99


def test_int8_output_logits_stay_float(exported: dict) -> None:
    """No Q/DQ pair on the graph output: the logits come out of a float op (the classifier)."""
    model = onnx.load(str(exported["int8"]))
    producer = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        node = producer[out.name]
        assert node.op_type not in ("DequantizeLinear", "QuantizeLinear"), node.name
        assert node.op_type == "Gemm"
    assert read_metadata(model)["quantization"]["float_output"] is True


def test_int8_logits_have_no_quantization_ties(exported: dict, fmnist: dict) -> None:
    """Quantized logits (one step of the output scale apart) tie for the top score on
    many images; float logits practically never do."""
    xte, _ = fmnist["test"]
    int8 = run_session(make_session(exported["int8"]), xte)
    top2 = np.sort(int8, axis=1)[:, -2:]
    assert int((top2[:, 0] == top2[:, 1]).sum()) == 0
    assert len(np.unique(int8)) > int8.size // 2  # not a handful of quantization levels


def test_float_output_check_refuses_a_quantized_output() -> None:
    from onnx import TensorProto, helper

    from exporters.int8 import float_output_check

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                               helper.make_tensor("z", TensorProto.INT8, [], [0])])
    with pytest.raises(ArtifactError, match="logits must stay float"):
        float_output_check(helper.make_model(graph))
