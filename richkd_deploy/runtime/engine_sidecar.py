"""`<engine>.json`: what a TensorRT engine was built with, checked before loading it.

A serialized engine only runs with the TensorRT version and the GPU architecture
that built it, and deserialising a foreign or tampered plan fails deep inside
TensorRT (or worse, runs an engine you did not validate). The sidecar records the
build environment and the engine's sha256; `check_sidecar` compares it with the
running environment *before* any deserialisation, and says what to do on mismatch.
The engine file itself stays a plain plan, so `trtexec` and Polygraphy read it.

The running environment is passed in as a `RuntimeEnv`, so this module is pure and
its refusals are tested without TensorRT or a GPU. The profile and version types live
here too: the runtime reads them from the sidecar and the exporter writes them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from richkd_deploy.errors import ArtifactError
from richkd_deploy.manifest import now_iso
from richkd_deploy.runs import atomic_write_json, sha256_file

SIDECAR_FORMAT = "richkd-deploy/engine-sidecar/1"
REBUILD = "rebuild it on this machine with richkd-deploy export --trt --force"


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def strongly_typed_only(self) -> bool:
        return self.major >= 11


def parse_version(text: str) -> TrtVersion:
    """'10.3.0.26', '11.0.0', '10.13.2.post1' -> TrtVersion."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        raise ValueError(f"not a TensorRT version: {text!r}")
    return TrtVersion(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimization profile for the single image input."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def max_batch(self) -> int:
        return self.max[0]

    def to_dict(self) -> dict[str, Any]:
        return {"input_name": self.input_name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapeProfile:
        return cls(str(d["input_name"]), tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))


@dataclass(frozen=True)
class RuntimeEnv:
    """The TensorRT + GPU an engine is built on or about to run on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.6"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def make_sidecar(engine_path: str | Path, source_onnx: str | Path, precision: str, profile: ShapeProfile,
                 env: RuntimeEnv, plan: dict[str, Any] | None = None,
                 preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar of a freshly built engine; `preprocess` is the source ONNX's
    preprocessing contract, so it travels with the engine."""
    return {
        "format": SIDECAR_FORMAT,
        "engine": Path(engine_path).name,
        "tensorrt_version": env.tensorrt_version,
        "gpu_name": env.gpu_name,
        "compute_capability": env.compute_capability,
        "precision": precision,
        "input_name": profile.input_name,
        "shape_range": {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)},
        "sha256": sha256_file(Path(engine_path)),
        "source_onnx": Path(source_onnx).name,
        "source_onnx_sha256": sha256_file(Path(source_onnx)),
        "preprocess": preprocess,
        "build_plan": plan,
        "created_at": now_iso(),
    }


def write_sidecar(engine_path: str | Path, sidecar: dict[str, Any]) -> Path:
    return atomic_write_json(sidecar_path(engine_path), sidecar)


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ArtifactError(f"TensorRT engine {engine_path} has no sidecar {path.name}, so its build environment is "
                            f"unknown; {REBUILD}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ArtifactError(f"engine sidecar {path} is unreadable or corrupt; {REBUILD}") from None
    needed = {"format", "tensorrt_version", "compute_capability", "sha256", "input_name", "shape_range", "precision"}
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT or not needed <= set(data):
        raise ArtifactError(f"engine sidecar {path} is not a {SIDECAR_FORMAT} file; {REBUILD}")
    return data


def profile_of(sidecar: dict[str, Any]) -> ShapeProfile:
    r = sidecar["shape_range"]
    return ShapeProfile(sidecar["input_name"], tuple(r["min"]), tuple(r["opt"]), tuple(r["max"]))


def verify_engine_file(engine_path: str | Path) -> dict[str, Any]:
    """The checks that need neither TensorRT nor a GPU: the engine exists, has a readable
    sidecar, and is byte for byte the file that was built. Returns the sidecar."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise ArtifactError(f"TensorRT engine {engine_path} does not exist; build it with richkd-deploy export --trt")
    side = read_sidecar(engine_path)
    actual = sha256_file(engine_path)
    if actual != side["sha256"]:
        raise ArtifactError(f"{engine_path} changed since it was built (sha256 {actual[:12]}..., sidecar says "
                            f"{side['sha256'][:12]}...); {REBUILD}")
    return side


def check_sidecar(engine_path: str | Path, env: RuntimeEnv) -> dict[str, Any]:
    """Refuse an engine that is missing its sidecar, was modified, or was built for
    another TensorRT major.minor or another GPU architecture. Returns the sidecar."""
    engine_path = Path(engine_path)
    side = verify_engine_file(engine_path)
    built, running = parse_version(side["tensorrt_version"]), parse_version(env.tensorrt_version)
    if (built.major, built.minor) != (running.major, running.minor):
        raise ArtifactError(f"{engine_path.name} was built with TensorRT {side['tensorrt_version']} but this machine "
                            f"has {env.tensorrt_version}; engines only load on the TensorRT version that built them: "
                            f"{REBUILD}")
    if str(side["compute_capability"]) != str(env.compute_capability):
        raise ArtifactError(f"{engine_path.name} was built for compute capability {side['compute_capability']} "
                            f"({side.get('gpu_name', '?')}) but this GPU ({env.gpu_name}) is "
                            f"{env.compute_capability}; {REBUILD}")
    return side
