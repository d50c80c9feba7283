"""The metadata dict that travels inside every exported ONNX file.

A deployed `model.onnx` is often copied away from its run folder; whoever loads it
still needs the class names, the input size and the normalisation it was trained
with, and the recipe hash to trace it back. ONNX `metadata_props` only holds
strings, so structured values are JSON-encoded here and decoded by `read_metadata`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporters.contract import build_contract

FORMAT = "richkd-deploy/onnx/1"

# keys whose values are JSON (everything else is a plain string)
_JSON_KEYS = {"classes", "mean", "std", "input_size", "channels", "num_classes", "temperature", "clip_random",
              "input_shape", "opset", "quantization", "clip", "preprocess"}


def build_metadata(student: Mapping[str, Any], opset: int, input_name: str, output_name: str) -> dict[str, str]:
    """Metadata from a student checkpoint dict (`RUN/student.pt`)."""
    from richkd_deploy import __version__

    channels = int(student.get("channels", 3))
    size = int(student["input_size"])
    meta: dict[str, Any] = {
        "format": FORMAT,
        "arch": str(student.get("arch", "")),
        "num_classes": int(student.get("num_classes", len(student.get("classes", [])))),
        "classes": list(student.get("classes", [])),
        "input_size": size,
        "channels": channels,
        "input_shape": [channels, size, size],
        "mean": [float(v) for v in student.get("mean", [])],
        "std": [float(v) for v in student.get("std", [])],
        "recipe_hash": str(student.get("recipe_hash", "")),
        "richkd_deploy_version": __version__,
        "clip_random": bool(student.get("clip_random", False)),
        "method": str(student.get("method", "")),
        "opset": int(opset),
        "input_name": input_name,
        "output_name": output_name,
        "precision": "fp32",
        # everything a deployment needs to feed the model (exporters.contract)
        "preprocess": build_contract(student),
    }
    if student.get("temperature") is not None:
        meta["temperature"] = float(student["temperature"])
    if student.get("clip"):
        meta["clip"] = dict(student["clip"])
    return encode(meta)


def encode(meta: Mapping[str, Any]) -> dict[str, str]:
    return {k: (json.dumps(v) if k in _JSON_KEYS or not isinstance(v, str) else v) for k, v in meta.items()}


def decode(props: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in props.items():
        if k in _JSON_KEYS:
            try:
                out[k] = json.loads(v)
            except ValueError:
                out[k] = v
        else:
            out[k] = v
    return out


def set_metadata(model: Any, meta: Mapping[str, str]) -> None:
    """Replace keys in an onnx.ModelProto's metadata_props (keeps unrelated keys)."""
    existing = {p.key: p.value for p in model.metadata_props}
    existing.update({str(k): str(v) for k, v in meta.items()})
    del model.metadata_props[:]
    for k, v in existing.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def read_metadata(source: str | Path | Any) -> dict[str, Any]:
    """Decoded metadata of an ONNX file path or ModelProto."""
    if isinstance(source, (str, Path)):
        import onnx

        source = onnx.load(str(source), load_external_data=False)
    return decode({p.key: p.value for p in source.metadata_props})
