"""`model.calibrated.onnx`: model.onnx with a fitted temperature folded into the graph.

`validate --calibrate` fits the temperature (that is evaluation: it needs held-out
labels); writing the artifact is this exporter's job. The temperature is appended to
a copy of the FP32 graph as one `Div` on the logits, so any ONNX runtime serves
calibrated probabilities without knowing about temperature scaling. The file is
staged, checked (its logits must equal model.onnx's divided by T) and appended to the
export with the commit protocol, like every other artifact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporters import formats as F
from exporters.commit import append, staging
from exporters.metadata import encode, set_metadata
from richkd_deploy.errors import ArtifactError
from richkd_deploy.manifest import Manifest, artifact_entry, verify_artifact
from richkd_deploy.runs import atomic_write_bytes
from richkd_deploy.runtime import create_runtime, predict_all

FORMAT = F.get_format("onnx-calibrated")
CALIBRATED = FORMAT.file
MAX_DIFF = 1e-4


def fold_temperature(model: Any, temperature: float) -> Any:
    """Return a copy of an onnx ModelProto whose single output is divided by T."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if len(graph.output) != 1:
        raise ArtifactError(f"expected one graph output (logits), found {len(graph.output)}")
    name = graph.output[0].name
    raw = name + "_uncalibrated"
    for node in graph.node:
        node.output[:] = [raw if o == name else o for o in node.output]
        node.input[:] = [raw if i == name else i for i in node.input]
    graph.initializer.append(numpy_helper.from_array(np.array(temperature, dtype=np.float32), name + "_temperature"))
    graph.node.append(helper.make_node("Div", [raw, name + "_temperature"], [name], name="temperature_scaling"))
    onnx.checker.check_model(out)
    return out


def export_calibrated(manifest: Manifest, temperature: float, check_x: np.ndarray, check_logits: np.ndarray,
                      calibrated_on: str) -> Manifest:
    """Write model.calibrated.onnx for `temperature`, check it on `check_x` (whose model.onnx
    logits are `check_logits`) and commit it into the export; returns the new manifest."""
    source = manifest.export_dir / F.get_format("onnx").file
    verify_artifact(manifest, source)
    model = fold_temperature(onnx.load(str(source)), temperature)
    set_metadata(model, encode({"temperature": temperature, "calibrated_on": calibrated_on}))
    with staging(manifest.export_dir) as folder:
        target = folder / CALIBRATED
        atomic_write_bytes(target, model.SerializeToString())
        with create_runtime(target, "cpu", manifest=False) as rt:
            got = predict_all(rt, check_x)
        diff = float(np.abs(got - check_logits / temperature).max(initial=0.0))
        if diff > MAX_DIFF:
            raise ArtifactError(f"{CALIBRATED}: logits differ from logits/T by {diff:.2e}; not written")
        entry = artifact_entry(folder, CALIBRATED, "onnx", "fp32", source=source.name,
                               parity={"max_abs_diff_vs_logits_over_t": diff}, extra={"temperature": temperature, "label": FORMAT.display})
        return append(manifest, folder, [entry])
