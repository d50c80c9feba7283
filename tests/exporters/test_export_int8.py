"""ONNX -> Q/DQ INT8 (TensorRT-shaped) and ONNX -> FP16 (float32 I/O)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporters.fp16 import convert_fp16
from exporters.int8 import Int8Options, preprocess, quantizable_layers, quantize_int8
from exporters.int8_fold import fold_relu_into_quantize
from exporters.metadata import read_metadata
from exporters.onnx_fp32 import export_onnx
from richkd_deploy.errors import ArtifactError
from richkd_deploy.runtime import agreement, create_runtime, top1
from richkd_deploy.runtime.onnxruntime import kernel_counts, make_session, run_session


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


def test_onnxruntime_fuses_every_conv(exported: dict) -> None:
    """The dedicated Q/DQ pairs + session settings let onnxruntime's x86 path run
    every convolution as QLinearConv and the classifier as QGemm (else INT8 ends up
    slower than FP32)."""
    counts = kernel_counts(exported["int8"])
    assert counts["float"] == 0 and counts["ops"] == {"QGemm": 1, "QLinearConv": 4}, counts


@pytest.fixture(scope="module")
def resnet8_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet8 (random init: which kernels run does not depend on the weights), whose
    residual blocks read tensors with two consumers."""
    from richkd_deploy.models import create_model, export_view

    d = tmp_path_factory.mktemp("resnet8")
    torch.manual_seed(0)
    fp32 = export_onnx(export_view(create_model("resnet8", num_classes=10)).eval(), d / "model.onnx",
                       (3, 32, 32), 17, {})
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    return quantize_int8(fp32, [x], d / "model.int8.onnx")


@pytest.mark.parametrize("disabled", [True, None], ids=["our-session", "plain-onnxruntime-session"])
def test_every_conv_and_gemm_of_resnet8_runs_as_an_int8_kernel(resnet8_int8: Path, disabled: bool | None) -> None:
    """In onnxruntime's optimized graph all 9 convolutions are QLinearConv and the
    classifier is a QGemm, in our sessions and in a plain InferenceSession (where CSE
    is on: before the scale copies it merged the dedicated pairs, 4 of 9 fused; before
    the Gemm bias split the classifier stayed a float Gemm)."""
    counts = kernel_counts(resnet8_int8, disabled_optimizers=disabled)
    assert counts["float_nodes"] == [], counts
    assert counts["ops"] == {"QGemm": 1, "QLinearConv": 9}, counts


@pytest.fixture(scope="module")
def resnet8_int8_cpu(resnet8_int8: Path) -> Path:
    """The same resnet8 and calibration in the cpu layout (`export.int8.layout: cpu`)."""
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    return quantize_int8(resnet8_int8.parent / "model.onnx", [x], resnet8_int8.parent / "model.int8.cpu.onnx",
                         Int8Options(fold_relu=True))


def test_cpu_layout_leaves_no_float_relu_or_qdq_between_int8_kernels(resnet8_int8: Path,
                                                                      resnet8_int8_cpu: Path) -> None:
    """The cpu layout folds each `DQ -> Relu -> Q` into a uint8 QuantizeLinear in the file
    (exporters.int8_fold): onnxruntime's optimized graph is int8 end to end, only the
    input's QuantizeLinear left. The tensorrt layout keeps the float chains (7 Relus in
    resnet8; ~39% of the INT8 time at batch 64)."""
    counts = kernel_counts(resnet8_int8_cpu)
    assert counts["ops"] == {"QGemm": 1, "QLinearConv": 9}, counts
    assert counts["float_activations"] == 0 and counts["quantize_ops"] == 1, counts
    trt = kernel_counts(resnet8_int8)
    assert trt["float_activations"] == 7 and trt["quantize_ops"] > 10, trt
    meta = read_metadata(onnx.load(str(resnet8_int8_cpu)))["quantization"]
    assert (meta["layout"], meta["relus_folded"], meta["tensorrt_compatible"]) == ("cpu", 7, False)
    assert read_metadata(onnx.load(str(resnet8_int8)))["quantization"]["layout"] == "tensorrt"
    model = onnx.load(str(resnet8_int8_cpu))
    assert fold_relu_into_quantize(model) == 0  # idempotent: nothing left to fold


def test_our_runtime_runs_the_file_as_written(resnet8_int8: Path) -> None:
    """What validate measures is what a plain onnxruntime session on the file computes:
    no rewrite at load time (a load-time fold once made validate's INT8 figures those of
    another graph than the one a deployment loads)."""
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    plain = ort.InferenceSession(str(resnet8_int8), providers=["CPUExecutionProvider"])
    expected = plain.run(None, {plain.get_inputs()[0].name: x})[0]
    with create_runtime(resnet8_int8, "cpu", manifest=False) as rt:
        got = rt.predict(x)
    np.testing.assert_array_equal(got, expected)


def test_cpu_layout_predicts_like_the_tensorrt_layout(exported: dict, fmnist: dict) -> None:
    """One rounding instead of two and a wider upper clamp (see fold_relu_into_quantize): on a
    trained model the cpu layout agrees with the tensorrt layout and is no further from FP32."""
    xtr, _ = fmnist["train"]
    cpu = quantize_int8(exported["fp32"], (xtr[i:i + 64] for i in range(0, 256, 64)),
                        exported["dir"] / "model.int8.cpu.onnx", Int8Options(fold_relu=True))
    xte, _ = fmnist["test"]
    x = xte[:256]
    fp32 = run_session(make_session(exported["fp32"]), x)
    cpu_out = run_session(make_session(cpu), x)
    trt_out = run_session(make_session(exported["int8"]), x)
    assert agreement(trt_out, cpu_out) >= 0.97
    assert np.abs(cpu_out - fp32).mean() <= np.abs(trt_out - fp32).mean() * 1.1
    assert kernel_counts(cpu)["float_activations"] == 0 < kernel_counts(exported["int8"])["float_activations"]


def test_kernel_counts_sees_a_float_conv(resnet8_int8: Path, tmp_path: Path) -> None:
    """The counter fails a model where one convolution is kept float."""
    src = resnet8_int8.parent / "model.onnx"
    pre = preprocess(src, tmp_path / "pre.onnx")
    first = quantizable_layers(onnx.load(str(pre)))[0]
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    path = quantize_int8(src, [x], tmp_path / "m.onnx", Int8Options(keep_float=(first,)), preprocessed=pre)
    counts = kernel_counts(path)
    assert counts["float"] == 1 and counts["int8"] == 9, counts  # (onnxruntime renames the float node)
    assert read_metadata(onnx.load(str(path)))["quantization"]["layers_in_float"] == [first]


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
        assert node.op_type == "Add" and producer[node.input[0]].op_type == "Gemm"  # the classifier's bias, split off
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


def test_module_name_maps_onnx_node_names_to_torch_modules() -> None:
    from exporters.int8 import module_name

    assert module_name("/model/layer1/layer1.0/conv1/Conv") == "model.layer1.0.conv1"
    assert module_name("/conv1/conv1.0/Conv") == "conv1.0"
    assert module_name("/fc/Gemm") == "fc"


def test_every_gemm_bias_is_split_and_kept_float(tmp_path: Path) -> None:
    """An MLP head (two Gemms): both biases become float Adds, both Gemms run as QGemm."""
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.manual_seed(0)
    fp32 = export_onnx(head.eval(), tmp_path / "mlp.onnx", (3, 2, 2), 17, {})
    x = np.random.default_rng(0).standard_normal((32, 3, 2, 2)).astype(np.float32)
    path = quantize_int8(fp32, [x], tmp_path / "mlp.int8.onnx")
    model = onnx.load(str(path))
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 2
    producer = {o: n for n in model.graph.node for o in n.output}
    assert all(producer[a.input[0]].op_type == "Gemm" for a in adds)  # no Q/DQ between a Gemm and its bias
    assert kernel_counts(path)["ops"] == {"QGemm": 2}
    ref = run_session(make_session(fp32), x)
    assert np.abs(run_session(make_session(path), x) - ref).max() < 0.1 * np.abs(ref).max()
