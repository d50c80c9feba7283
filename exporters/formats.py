"""The table of export formats: one row per artifact `richkd-deploy export` can make.

Driving the exporter from a table (as Ultralytics' `export_formats()` does) keeps the
file names, which artifact each one derives from and what it needs in one place, so
the pipeline, the manifest and the validator agree on them without string literals
scattered around.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from richkd_deploy.errors import RecipeError


@dataclass(frozen=True)
class Format:
    name: str
    file: str
    kind: str  # "onnx" | "engine"
    precision: str  # "fp32" | "fp16" | "int8"
    source: str | None  # the format this one is derived from
    needs_gpu: bool
    made_by: str = "export"  # the command that writes it
    label: str = ""  # how reports and bench name it (default: the precision)

    @property
    def display(self) -> str:
        return self.label or self.precision


FORMATS: tuple[Format, ...] = (
    Format("onnx", "model.onnx", "onnx", "fp32", None, False),
    Format("onnx-int8", "model.int8.onnx", "onnx", "int8", "onnx", False),
    Format("onnx-fp16", "model.fp16.onnx", "onnx", "fp16", "onnx", False),
    Format("engine-fp16", "model.fp16.engine", "engine", "fp16", "onnx-fp16", True),
    Format("engine-int8", "model.int8.engine", "engine", "int8", "onnx-int8", True),
    Format("onnx-calibrated", "model.calibrated.onnx", "onnx", "fp32", "onnx", False, "validate --calibrate",
           "fp32-calibrated"),
)
BY_FILE = {f.file: f for f in FORMATS}

BY_NAME = {f.name: f for f in FORMATS}


def format_of_file(file: str) -> Format | None:
    """The format a file name belongs to (None for a file this tool does not make)."""
    return BY_FILE.get(file)


def get_format(name: str) -> Format:
    try:
        return BY_NAME[name]
    except KeyError:
        raise RecipeError(f"unknown export format {name!r}; known: {', '.join(BY_NAME)}") from None


def onnx_formats(precisions: Iterable[str]) -> list[Format]:
    """ONNX artifacts for the recipe's precisions (fp32 always: the others derive from it)."""
    wanted = set(precisions) | {"fp32"}
    return [f for f in FORMATS if f.kind == "onnx" and f.precision in wanted and f.made_by == "export"]


def engine_formats(precisions: Iterable[str]) -> list[Format]:
    """TensorRT engines for the recipe's reduced precisions. An FP32 engine is not
    built: it would only be slower than FP16 with nothing to validate that the ONNX
    FP32 artifact does not already cover."""
    wanted = set(precisions)
    return [f for f in FORMATS if f.kind == "engine" and f.precision in wanted and f.made_by == "export"]
