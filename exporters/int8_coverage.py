"""Calibration coverage: how many activations fall outside the ranges INT8 calibrated.

A Q/DQ graph clips every quantized activation to `[(-128 - zp) * scale, (127 - zp) * scale]`.
When validate feeds images unlike the calibration images (corruptions), more
activations land outside and are clipped: that is where corruption accuracy goes. For
each quantized activation tensor this reports the share of values outside its range,
on each image set given (the holdout, clean and corrupted).

The values are read from the INT8 graph itself, run with graph optimizations off and
the float tensor in front of each QuantizeLinear added as an output, so they are what
the quantized network computes at that point, batch by batch (no whole-set buffers).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from richkd_deploy.deps import require


def quantized_ranges(model: Any) -> dict[str, tuple[float, float]]:
    """{float activation tensor: (low, high)} of every QuantizeLinear on an activation."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ranges: dict[str, tuple[float, float]] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] not in inits:
            continue
        scale = float(np.asarray(inits[node.input[1]]).reshape(-1)[0])
        zp = float(np.asarray(inits[node.input[2]]).reshape(-1)[0]) if len(node.input) > 2 and node.input[2] in inits else 0.0
        low, high = (-128.0 - zp) * scale, (127.0 - zp) * scale
        old = ranges.get(node.input[0])
        ranges[node.input[0]] = (low, high) if old is None else (max(old[0], low), min(old[1], high))
    return ranges


def activation_coverage(int8_path: str | Path, image_sets: dict[str, np.ndarray],
                        batch_size: int = 64) -> dict[str, Any]:
    """{"tensors": [{"tensor", "range", "<set>": share outside}], "<set>": overall share outside}."""
    onnx = require("onnx")
    ort = require("onnxruntime")
    model = onnx.load(str(int8_path))
    ranges = quantized_ranges(model)
    names = list(ranges)
    del model.graph.output[:]  # only the probed tensors are wanted
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="richkd-coverage-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        session = ort.InferenceSession(str(probe), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outside = {s: np.zeros(len(names), np.int64) for s in image_sets}
    total = {s: np.zeros(len(names), np.int64) for s in image_sets}
    lows = np.array([ranges[n][0] for n in names])
    highs = np.array([ranges[n][1] for n in names])
    for set_name, x in image_sets.items():
        for i in range(0, len(x), batch_size):
            values = session.run(names, {input_name: np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)})
            for k, v in enumerate(values):
                # the Q rounds to the nearest step: a value within half a step of the range is not clipped
                half = (highs[k] - lows[k]) / 255.0 / 2
                outside[set_name][k] += int(((v < lows[k] - half) | (v > highs[k] + half)).sum())
                total[set_name][k] += int(v.size)
    rows = []
    for k, n in enumerate(names):
        row: dict[str, Any] = {"tensor": n, "range": [float(lows[k]), float(highs[k])]}
        for s in image_sets:
            row[s] = float(outside[s][k] / max(total[s][k], 1))
        rows.append(row)
    summary: dict[str, Any] = {"tensors": rows}
    for s in image_sets:
        summary[s] = float(outside[s].sum() / max(total[s].sum(), 1))
    return summary
