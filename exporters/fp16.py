"""ONNX FP32 -> ONNX FP16 with FP32 inputs and outputs.

`keep_io_types=True` keeps the file a drop-in replacement: callers feed the same
float32 arrays and get float32 logits, and the casts live inside the graph. This
file is also the source of the FP16 TensorRT engine: TensorRT 11 removed the FP16
builder flag and takes precision from the graph (strongly typed networks).
"""

from __future__ import annotations

from pathlib import Path

from exporters.metadata import set_metadata
from richkd_deploy.deps import require
from richkd_deploy.errors import ArtifactError
from richkd_deploy.runs import atomic_write_bytes


def convert_fp16(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Write an FP16 copy of `onnx_path` to `out_path` (atomically)."""
    onnx = require("onnx")
    from onnxconverter_common import float16

    model = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in model.metadata_props}
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    props["precision"] = "fp16"
    set_metadata(converted, props)
    for value in (*converted.graph.input, *converted.graph.output):
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ArtifactError(f"FP16 conversion changed the type of {value.name}; report a bug")
    try:
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"FP16 model fails onnx.checker: {exc}") from exc
    atomic_write_bytes(Path(out_path), converted.SerializeToString())
    return Path(out_path)
