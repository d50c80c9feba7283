"""`richkd-deploy verify ARTIFACT`: rerun the golden images through one artifact on one
runtime, using only the preprocessing contract recorded with the artifact.

The same check a device team makes on its own hardware: raw images from
`export/golden.npz` -> the contract (`exporters.contract.preprocess`, read from the
ONNX metadata, the engine sidecar, or for `student.pt` the golden file) -> the
artifact -> logits, compared with the logits recorded at export. It passes when the
largest |logit difference| and the top-1 agreement are within the precision's
tolerance (FP16 and INT8 kernels differ between runtimes by more than FP32 does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.contract import preprocess
from exporters.golden import GOLDEN_FILE, read_golden
from exporters.metadata import read_metadata
from richkd_deploy.errors import ArtifactError, RichKDError
from richkd_deploy.evaluate.metrics import predictions
from richkd_deploy.runtime import create_runtime
from richkd_deploy.runtime.engine_sidecar import read_sidecar

# precision -> (largest |logit diff| allowed, smallest top-1 agreement)
TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-3, 1.0), "fp16": (5e-2, 1.0), "int8": (0.5, 0.9)}
RUNTIMES = ("auto", "onnxruntime", "torch", "tensorrt")
_SUFFIX_RUNTIME = {".onnx": "onnxruntime", ".pt": "torch", ".pth": "torch", ".engine": "tensorrt", ".plan": "tensorrt"}


@dataclass
class VerifyResult:
    artifact: str
    runtime: str
    precision: str
    n: int
    max_abs_diff: float
    top1_agreement: float
    atol: float
    min_agreement: float
    reference: str
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (f"{verdict}: {self.artifact} on {self.runtime} ({self.precision}), {self.n} golden images: max |logit diff| "
                f"{self.max_abs_diff:.3g} (allowed {self.atol:g}), top-1 agreement {self.top1_agreement:.4f} "
                f"(required {self.min_agreement:g}) against {self.reference}")


def _contract_and_precision(path: Path, golden_contract: dict[str, Any]) -> tuple[dict[str, Any], str, str | None]:
    """(contract, precision, source file whose logits stand in when the artifact has none)."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        meta = read_metadata(path)
        contract = meta.get("preprocess")
        if not isinstance(contract, dict):
            raise ArtifactError(f"{path.name} records no preprocessing contract (exported before it existed); "
                                "re-export with richkd-deploy export --force")
        return contract, str(meta.get("precision", "fp32")), None
    if suffix in (".engine", ".plan"):
        side = read_sidecar(path)
        contract = side.get("preprocess")
        if not isinstance(contract, dict):
            raise ArtifactError(f"{path.name}'s sidecar records no preprocessing contract; rebuild the engine")
        return contract, str(side.get("precision", "fp32")), side.get("source_onnx")
    return golden_contract, "fp32", None


def verify_artifact(artifact: str | Path, runtime: str = "auto", provider: str = "cpu", golden: str | Path | None = None,
                    atol: float | None = None, min_agreement: float | None = None) -> VerifyResult:
    """Run the golden images through `artifact` on `runtime`; see the module docstring."""
    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    natural = _SUFFIX_RUNTIME.get(path.suffix.lower())
    if natural is None:
        raise ArtifactError(f"cannot tell how to run {path.name}: expected .onnx, .engine or student.pt")
    if runtime not in RUNTIMES:
        raise RichKDError(f"--runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")
    if runtime not in ("auto", natural):
        raise RichKDError(f"{path.name} runs on {natural}, not {runtime}; pass --runtime {natural} or auto")
    golden_path = Path(golden) if golden else (path.parent / "export" / GOLDEN_FILE if natural == "torch"
                                               else path.parent / GOLDEN_FILE)
    g = read_golden(golden_path)
    contract, precision, source = _contract_and_precision(path, g.contract)
    reference = path.name if path.name in g.logits else source
    if reference not in g.logits:
        raise ArtifactError(f"{golden_path} holds no expected logits for {path.name} (it has: {', '.join(g.logits)}); "
                            "re-export with richkd-deploy export --force")
    x = preprocess(g.images, contract)
    backend = create_runtime(path, provider="tensorrt" if natural == "tensorrt" else provider)
    got = np.asarray(backend.predict(x), dtype=np.float64)
    want = g.logits[reference].astype(np.float64)
    if got.shape != want.shape:
        raise ArtifactError(f"{path.name} returned logits {list(got.shape)}, the golden file holds {list(want.shape)}")
    tol_abs, tol_agree = TOLERANCES.get(precision, TOLERANCES["fp32"])
    atol = tol_abs if atol is None else float(atol)
    min_agreement = tol_agree if min_agreement is None else float(min_agreement)
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    agree = float(np.mean(predictions(got) == predictions(want)))
    ok = bool(np.isfinite(got).all()) and diff <= atol and agree >= min_agreement
    return VerifyResult(path.name, f"{natural}-{provider}" if natural == "onnxruntime" else natural, precision,
                        int(len(want)), diff, agree, atol, min_agreement, f"{golden_path.name}:{reference}", ok)
