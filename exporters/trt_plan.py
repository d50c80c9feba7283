"""What to ask TensorRT for, decided without importing TensorRT.

Everything version- and recipe-dependent about an engine build lives here as pure
functions, so it is tested on machines without a GPU:

* TensorRT 10 (Jetson is still on it) builds *weakly typed* networks and needs the
  precision builder flags: FP16 for the FP16 engine, INT8 (+FP16 for the layers the
  Q/DQ graph leaves in float) for the Q/DQ engine.
* TensorRT 11 removed BuilderFlag.FP16/INT8 and the calibrators: every network is
  strongly typed and precision comes from the graph, i.e. the FP16 ONNX and the
  Q/DQ ONNX. Its STRONGLY_TYPED creation flag is accepted and ignored, so we pass it
  to say what we mean.
* One optimization profile covering the recipe's export.trt min/opt/max batch at
  the model's input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from richkd_deploy.errors import MissingDependencyError, RecipeError
from richkd_deploy.runtime.engine_sidecar import ShapeProfile, TrtVersion, parse_version

MIN_MAJOR = 10


def profile_from_recipe(trt_cfg: Any, input_shape: Sequence[int], input_name: str = "input") -> ShapeProfile:
    """Profile from `recipe.export.trt` (min_batch/opt_batch/max_batch) and (C, H, W)."""
    lo, opt, hi = int(trt_cfg.min_batch), int(trt_cfg.opt_batch), int(trt_cfg.max_batch)
    if not 1 <= lo <= opt <= hi:
        raise RecipeError(f"export.trt: need 1 <= min_batch <= opt_batch <= max_batch, got {lo}, {opt}, {hi}")
    chw = tuple(int(d) for d in input_shape)
    if len(chw) != 3 or min(chw) < 1:
        raise RecipeError(f"model input shape must be (C, H, W), got {input_shape}")
    return ShapeProfile(input_name, (lo, *chw), (opt, *chw), (hi, *chw))


@dataclass(frozen=True)
class BuildPlan:
    """Names of TensorRT enum members to set; resolved against the module at build time."""

    precision: str
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag members
    builder_flags: tuple[str, ...]  # BuilderFlag members
    source_precision: str  # which ONNX artifact to parse: fp16 -> model.fp16.onnx, int8 -> model.int8.onnx

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ENGINE_PRECISIONS = ("fp16", "int8")


def plan_build(version: TrtVersion | str, precision: str) -> BuildPlan:
    v = parse_version(version) if isinstance(version, str) else version
    if precision not in ENGINE_PRECISIONS:
        raise RecipeError(f"TensorRT engine precision {precision!r} is not built; use one of {', '.join(ENGINE_PRECISIONS)}")
    if v.major < MIN_MAJOR:
        raise MissingDependencyError(f"TensorRT {v} is too old: richkd-deploy builds with TensorRT >= {MIN_MAJOR}; "
                                     'pip install -U "richkd-deploy[trt]"')
    if v.strongly_typed_only:
        return BuildPlan(precision, ("STRONGLY_TYPED",), (), precision)
    flags = ("FP16",) if precision == "fp16" else ("INT8", "FP16")
    return BuildPlan(precision, (), flags, precision)
