"""Build a TensorRT engine from an ONNX artifact (TensorRT 10 and 11).

The only build code that imports `tensorrt`; every decision (flags per version,
the profile) comes from `exporters.trt_plan`. The timing cache is read from and
written back to one file per run (`RUN/export/timing.cache`), so rebuilding the
same model on the same GPU skips most kernel timing; a cache from another GPU or
TensorRT version is rejected by TensorRT and replaced by a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporters.metadata import read_metadata
from exporters.trt_plan import plan_build
from richkd_deploy.deps import require
from richkd_deploy.errors import ArtifactError
from richkd_deploy.runs import atomic_write_bytes
from richkd_deploy.runtime.engine_sidecar import ShapeProfile, make_sidecar, parse_version, write_sidecar
from richkd_deploy.runtime.tensorrt import running_env


def _set_timing_cache(config: Any, cache_file: Path | None, log: Callable[[str], None]) -> Any:
    data = b""
    if cache_file is not None and cache_file.is_file():
        data = cache_file.read_bytes()
    try:
        cache = config.create_timing_cache(data)
        if config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
        log(f"timing cache {cache_file} is from another GPU or TensorRT version; starting a fresh one")
    except Exception as exc:  # noqa: BLE001 - a corrupt cache must not stop the build
        log(f"timing cache {cache_file} is unusable ({exc}); starting a fresh one")
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_engine(onnx_path: str | Path, precision: str, profile: ShapeProfile, out_path: str | Path, *,
                 workspace_mb: int = 1024, timing_cache: str | Path | None = None,
                 log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Build `out_path` (a plain serialized plan, written atomically) and its sidecar.

    Returns (engine path, sidecar dict).
    """
    trt = require("tensorrt", "trt")
    env = running_env()
    plan = plan_build(parse_version(trt.__version__), precision)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    cache_file = Path(timing_cache) if timing_cache is not None else None

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {errors}")
    if network.num_inputs != 1 or network.get_input(0).name != profile.input_name:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise ArtifactError(f"{onnx_path.name} has inputs {names}; expected one named {profile.input_name!r}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(profile.input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    _set_timing_cache(config, cache_file, log)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"TensorRT could not build a {precision} engine from {onnx_path.name} (see the TensorRT "
                            "log above); try a larger export.trt.workspace_mb or a smaller export.trt.max_batch")
    atomic_write_bytes(out_path, bytes(memoryview(serialized)))
    if cache_file is not None:
        atomic_write_bytes(cache_file, bytes(memoryview(config.get_timing_cache().serialize())))
    sidecar = make_sidecar(out_path, onnx_path, precision, profile, env, plan.to_dict(),
                           preprocess=_contract_of(onnx_path))
    write_sidecar(out_path, sidecar)
    return out_path, sidecar


def _contract_of(source_onnx: Path) -> dict[str, Any] | None:
    """The source ONNX's preprocessing contract, or None when it has none (an old export)."""
    try:
        contract = read_metadata(source_onnx).get("preprocess")
    except Exception:  # noqa: BLE001 - not a readable ONNX: the sidecar still describes the engine
        return None
    return contract if isinstance(contract, dict) else None
