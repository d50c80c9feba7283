"""`export/golden.npz`: raw test images and the logits every artifact must give for them.

A device team that ports preprocessing and inference to its own runtime needs a
known answer to compare with: these few dozen raw uint8 images (before any
padding, resizing or normalisation), their labels, the preprocessing contract
(`exporters.contract`) and, per exported file, the logits it produced here. Feeding
the images through the contract and the artifact on the device must reproduce
the logits within the precision's tolerance (`richkd-deploy verify` does exactly
that on any runtime this project runs).

Keys: `images` (uint8 [N, H, W] grey or [N, H, W, 3] RGB), `labels` (int64 [N]),
`indices` (positions in the test split), `contract` (JSON string), and
`logits/<file>` (float32 [N, K]) for each artifact, `student.pt` included.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters.contract import build_contract, preprocess, raw_from_dataset
from richkd_deploy.errors import ArtifactError
from richkd_deploy.runs import atomic_write_bytes
from richkd_deploy.runtime import create_runtime

GOLDEN_FILE = "golden.npz"
GOLDEN_IMAGES = 32
_LOGITS = "logits/"


@dataclass
class Golden:
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    contract: dict[str, Any]
    logits: dict[str, np.ndarray]


def golden_indices(n_total: int, n: int = GOLDEN_IMAGES) -> np.ndarray:
    """Evenly spaced test positions (deterministic, spread over the classes of sorted splits)."""
    n = min(int(n), int(n_total))
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


def write_golden(path: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 contract: Mapping[str, Any], logits: Mapping[str, np.ndarray]) -> Path:
    """Write the golden file atomically (npz, no pickles: loadable with allow_pickle=False)."""
    arrays: dict[str, np.ndarray] = {
        "images": np.ascontiguousarray(images, dtype=np.uint8),
        "labels": np.asarray(labels, dtype=np.int64),
        "indices": np.asarray(indices, dtype=np.int64),
        "contract": np.array(json.dumps(dict(contract), sort_keys=True)),
    }
    arrays.update({_LOGITS + name: np.asarray(v, dtype=np.float32) for name, v in logits.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def read_golden(path: Path) -> Golden:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; re-export with richkd-deploy export --force to write it")
    try:
        with np.load(path, allow_pickle=False) as z:
            logits = {k[len(_LOGITS):]: z[k] for k in z.files if k.startswith(_LOGITS)}
            return Golden(z["images"], z["labels"], z["indices"], json.loads(str(z["contract"])), logits)
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{path} is not a golden file ({exc}); re-export with richkd-deploy export --force") from exc


def export_golden(staging: Path, test_dataset: Any, payload: Mapping[str, Any], artifacts: Mapping[str, Path],
                  student_view: Any = None, log: Any = print) -> str | None:
    """Write `staging/golden.npz` for the ONNX `artifacts` (name -> path in staging) and
    the torch student; returns its file name, or None when the test set holds no raw
    images (a dataset of float arrays). Each artifact's logits come from its own
    runtime fed with `contract.preprocess` output, i.e. from the contract alone."""
    contract = build_contract(payload)
    indices = golden_indices(len(test_dataset))
    raw = raw_from_dataset(test_dataset, indices, contract)
    if raw is None:
        log("[export] golden.npz: skipped (the test set holds no raw uint8 images)")
        return None
    x = preprocess(raw, contract)
    logits: dict[str, np.ndarray] = {}
    for path in artifacts.values():
        try:
            logits[Path(path).name] = create_runtime(path, provider="cpu", manifest=False).predict(x)
        except Exception as exc:  # noqa: BLE001 - e.g. an FP16 op without a CPU kernel: no expected logits for it
            log(f"[export] golden.npz: no logits for {Path(path).name} ({type(exc).__name__}: {exc})")
    if student_view is not None:
        device = next(student_view.parameters()).device
        with torch.inference_mode():
            logits["student.pt"] = student_view.eval()(torch.from_numpy(x).to(device)).float().cpu().numpy()
    labels = np.asarray(test_dataset.labels, dtype=np.int64)[indices]
    write_golden(Path(staging) / GOLDEN_FILE, raw, labels, indices, contract, logits)
    log(f"[export] {GOLDEN_FILE}: {len(indices)} raw test images {list(raw.shape[1:])} and the expected logits of "
        f"{', '.join(logits)}")
    return GOLDEN_FILE
