"""`validate --calibrate`: fold a fitted temperature into a copy of the FP32 graph.

The temperature is fitted on the held-out split of the training set (never on the
test set), then appended to the graph as one `Div` on the logits, so any ONNX runtime
serves calibrated probabilities without knowing about temperature scaling. The new
file is recorded in its own metadata and in the manifest like every other artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from richkd_deploy.errors import ArtifactError, RichKDError
from richkd_deploy.evaluate import metrics
from richkd_deploy.recipe import Recipe
from richkd_deploy.runs import RunDir, atomic_write_bytes

CALIBRATED = "model.calibrated.onnx"


def fold_temperature(model: Any, temperature: float) -> Any:
    """Return a copy of an onnx ModelProto whose single output is divided by T."""
    import onnx
    from onnx import helper, numpy_helper

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


def add_calibrated_model(run: RunDir, payload: dict[str, Any], recipe: Recipe, manifest: Any,
                         log: Callable[[str], None]) -> Any:
    """Fit T on the held-out split with the FP32 ONNX model, write model.calibrated.onnx
    and record it in the manifest; returns the updated manifest."""
    import onnx

    from exporters.metadata import encode, set_metadata
    from richkd_deploy.data.for_recipe import build_eval_datasets
    from richkd_deploy.evaluate.backends import create_backend
    from richkd_deploy.evaluate.harness import _normalise, predict_all
    from richkd_deploy.manifest import add_artifact, write_manifest

    source = run.export_dir / "model.onnx"
    backend = create_backend(source, provider="cpu", manifest=manifest)  # sha256-checked
    ds = build_eval_datasets(recipe)
    if ds.holdout is None or len(ds.holdout) == 0:
        raise RichKDError("--calibrate needs a held-out split to fit the temperature on; set data.holdout_fraction > 0 "
                          "and retrain")
    x = _normalise(ds.holdout.uint8_batch(np.arange(len(ds.holdout)), size=recipe.data.input_size),
                   payload["mean"], payload["std"])
    labels = np.asarray(ds.holdout.labels, dtype=np.int64)
    logits = predict_all(backend, x, recipe.validate.batch_size)
    t = float(metrics.fit_temperature(logits, labels))
    model = fold_temperature(onnx.load(str(source)), t)
    set_metadata(model, encode({"temperature": t, "calibrated_on": f"holdout ({len(labels)} training images)"}))
    target = run.export_dir / CALIBRATED
    if manifest.artifact(CALIBRATED) is not None:  # the manifest never vouches for a file being replaced
        manifest["artifacts"] = [a for a in manifest["artifacts"] if a["file"] != CALIBRATED]
        write_manifest(manifest)
    atomic_write_bytes(target, model.SerializeToString())
    calibrated = create_backend(target, provider="cpu", manifest=False)
    got = predict_all(calibrated, x[:256], recipe.validate.batch_size)
    diff = float(np.abs(got - logits[:256] / t).max())
    if diff > 1e-4:
        target.unlink()
        raise ArtifactError(f"{CALIBRATED}: logits differ from logits/T by {diff:.2e}; not written")
    log(f"calibrate: T={t:.4f} fitted on {len(labels)} held-out images; NLL {metrics.nll(logits, labels):.4f} -> "
        f"{metrics.nll(logits / t, labels):.4f}; wrote {target}")
    return add_artifact(run.export_dir, CALIBRATED, "onnx", "fp32", source="model.onnx",
                        parity={"max_abs_diff_vs_logits_over_t": diff}, extra={"temperature": t})
