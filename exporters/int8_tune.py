"""Accuracy-aware INT8: choose the calibration on the holdout, and fall back to float
layers when the INT8 gates fail there.

The INT8 gates are validate's `max_top1_drop` and `min_agreement`, judged here on the
holdout split (held-out training images: never the test set, which validate then
reports on). Steps, each recorded for the manifest:

1. candidates: the recipe's method, or with `export.int8.search` every onnxruntime
   calibrator (minmax, entropy, percentile); each is quantized, run on the holdout and
   timed at batch 64; the fastest one that passes is kept (within 10% of the fastest
   counts as as fast, and then the lowest KL to FP32 wins).
2. sensitivity (when the kept candidate fails, or `export.int8.sensitivity`): for each
   Conv/Gemm, the graph with that layer alone quantized (and, with `sensitivity: true`,
   with that layer alone kept in float), as holdout top-1 and mean KL(FP32 || INT8). Layers are ranked by the KL of
   "quantized alone": what one layer's quantization costs by itself.
3. fallback (`export.int8.fallback`): keep the 1, 2, ... most sensitive layers in float
   (up to `max_float_layers`) until the gates hold; the first passing step is kept. If
   none passes, the best failing artifact (smallest top-1 drop, then highest agreement)
   is kept with its reason, so the search is not lost.

Everything here runs the artifacts through `richkd_deploy.runtime` like the rest of the
export, and writes nothing but the chosen artifact (atomically).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.inputs import array_batches
from exporters.int8 import METHODS, Int8Options, module_name, preprocess, quantizable_layers, quantize_int8
from richkd_deploy.recipe import Int8Config
from richkd_deploy.runs import atomic_write_bytes
from richkd_deploy.runtime import agreement, create_runtime, predict_all, top1
from richkd_deploy.runtime.onnxruntime import kernel_counts

Log = Callable[[str], None]
LATENCY_BATCH = 64
SAME_SPEED = 0.10  # candidates within 10% of the fastest p50 are "as fast"


def mean_kl(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean KL(softmax(ref) || softmax(got)) over images, in nats."""
    a = ref.astype(np.float64) - ref.max(axis=1, keepdims=True)
    b = got.astype(np.float64) - got.max(axis=1, keepdims=True)
    la = a - np.log(np.exp(a).sum(axis=1, keepdims=True))
    lb = b - np.log(np.exp(b).sum(axis=1, keepdims=True))
    return float((np.exp(la) * (la - lb)).sum(axis=1).mean()) if len(ref) else 0.0


@dataclass
class Holdout:
    """Holdout images, labels, FP32 logits on them, and the INT8 gates."""

    x: np.ndarray
    y: np.ndarray
    fp32_logits: np.ndarray
    max_top1_drop: float | None
    min_agreement: float | None

    @property
    def fp32_top1(self) -> float:
        return top1(self.fp32_logits, self.y)

    def measure(self, path: Path, label: str, options: Int8Options, timed: bool = True) -> dict[str, Any]:
        with create_runtime(path, "cpu", manifest=False) as rt:
            logits = predict_all(rt, self.x, finite=False)
            latency = _p50_ms(rt.predict, self.x[:LATENCY_BATCH]) if timed else None
        acc = top1(logits, self.y)
        row: dict[str, Any] = {
            "step": label, "method": options.method, "layers_in_float": list(options.keep_float),
            "holdout_top1": acc, "holdout_top1_drop": self.fp32_top1 - acc,
            "agreement_with_fp32": agreement(self.fp32_logits, logits), "kl_to_fp32": mean_kl(self.fp32_logits, logits),
            "p50_ms_batch64": latency}
        reasons = []
        if self.max_top1_drop is not None and row["holdout_top1_drop"] > self.max_top1_drop + 1e-12:
            reasons.append(f"holdout top-1 drop {row['holdout_top1_drop']:.4f} > max_top1_drop {self.max_top1_drop}")
        if self.min_agreement is not None and row["agreement_with_fp32"] < self.min_agreement:
            reasons.append(f"agreement with FP32 {row['agreement_with_fp32']:.4f} < min_agreement {self.min_agreement}")
        row["passes"] = not reasons
        row["reason"] = "; ".join(reasons) or None
        return row


def _p50_ms(fn: Callable[[np.ndarray], Any], x: np.ndarray, rounds: int = 7) -> float:
    fn(x)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def _fastest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest row; rows within SAME_SPEED of it count as equally fast (the methods
    give graphs of the same shape, so their timing differences are mostly noise) and the
    lowest KL to FP32 among them wins."""
    best = min(r["p50_ms_batch64"] for r in rows)
    return min((r for r in rows if r["p50_ms_batch64"] <= best * (1 + SAME_SPEED)), key=lambda r: r["kl_to_fp32"])


def _best_failing(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rows, key=lambda r: (r["holdout_top1_drop"], -r["agreement_with_fp32"], r["kl_to_fp32"]))


def sensitivity_table(fp32: Path, pre: Path, calibration: np.ndarray, holdout: Holdout, base: Int8Options,
                      tmp: Path, log: Log, kept_float_alone: bool = True) -> list[dict[str, Any]]:
    """Per Conv/Gemm layer: holdout top-1 and KL to FP32 with that layer alone quantized,
    and (with `kept_float_alone`) with that layer alone kept in float; sorted most
    sensitive first. Each entry is one quantization + one holdout pass."""
    import onnx

    rows = []
    layers = quantizable_layers(onnx.load(str(pre), load_external_data=False))
    for i, layer in enumerate(layers):
        row: dict[str, Any] = {"layer": layer, "module": module_name(layer)}
        modes = [("quantized_alone", dataclasses.replace(base, quantize_only=(layer,), keep_float=()))]
        if kept_float_alone:
            modes.append(("kept_float_alone", dataclasses.replace(base, keep_float=(layer,), quantize_only=())))
        for mode, opts in modes:
            path = quantize_int8(fp32, array_batches(calibration, 64), tmp / f"sens{i}_{mode}.onnx", opts, pre,
                                 tmp / f"ranges-{opts.method}.json")
            m = holdout.measure(path, mode, opts, timed=False)
            row[mode] = {"holdout_top1": m["holdout_top1"], "kl_to_fp32": m["kl_to_fp32"]}
        rows.append(row)
        kept = row.get("kept_float_alone")
        log(f"[export] int8 sensitivity {layer}: quantized alone KL {row['quantized_alone']['kl_to_fp32']:.4f} "
            f"top-1 {row['quantized_alone']['holdout_top1']:.4f}"
            + (f"; kept float alone KL {kept['kl_to_fp32']:.4f} top-1 {kept['holdout_top1']:.4f}" if kept else ""))
    return sorted(rows, key=lambda r: -r["quantized_alone"]["kl_to_fp32"])


def tune_int8(fp32: Path, calibration: np.ndarray, out_path: Path, cfg: Int8Config, holdout: Holdout | None,
              log: Log) -> dict[str, Any]:
    """Write model.int8.onnx to `out_path` as the module docstring says; returns the
    record for its manifest entry (candidates, sensitivity, fallback steps, the choice)."""
    base = Int8Options(cfg.method, cfg.per_channel, cfg.symmetric_activations,
                       fold_relu=cfg.resolved_layout(trt=False) == "cpu")
    with tempfile.TemporaryDirectory(prefix="richkd-int8-tune-") as tmp_:
        tmp = Path(tmp_)
        pre = preprocess(fp32, tmp / "pre.onnx")
        if holdout is None:
            quantize_int8(fp32, array_batches(calibration, 64), out_path, base, pre)
            return {"options": base.record(len(calibration)),
                    "holdout": "none: data.holdout_fraction is 0, so no method search, sensitivity or fallback"}
        record: dict[str, Any] = {"holdout": {"images": int(len(holdout.y)), "fp32_top1": holdout.fp32_top1,
                                              "max_top1_drop": holdout.max_top1_drop,
                                              "min_agreement": holdout.min_agreement}}
        files: dict[str, Path] = {}
        candidates = []
        for method in (list(METHODS) if cfg.search else [cfg.method]):
            opts = dataclasses.replace(base, method=method)
            files[method] = quantize_int8(fp32, array_batches(calibration, 64), tmp / f"{method}.onnx", opts, pre,
                                          tmp / f"ranges-{method}.json")
            row = holdout.measure(files[method], method, opts)
            candidates.append({**row, "_options": opts})
            log(f"[export] int8 {method}: holdout top-1 {row['holdout_top1']:.4f} (FP32 {holdout.fp32_top1:.4f}), "
                f"agreement {row['agreement_with_fp32']:.4f}, {row['p50_ms_batch64']:.2f} ms at batch {LATENCY_BATCH}"
                f"{'' if row['passes'] else ' - fails: ' + row['reason']}")
        passing = [c for c in candidates if c["passes"]]
        chosen = _fastest(passing) if passing else _best_failing(candidates)
        chosen_file = files[chosen["method"]]
        steps: list[dict[str, Any]] = []
        if cfg.sensitivity or (not chosen["passes"] and cfg.fallback and cfg.max_float_layers > 0):
            # the fallback ranks by "quantized alone"; "kept float alone" doubles the cost, so only on request
            table = sensitivity_table(fp32, pre, calibration, holdout, chosen["_options"], tmp, log,
                                      kept_float_alone=cfg.sensitivity)
            record["sensitivity"] = table
            if not chosen["passes"] and cfg.fallback:
                order = [r["layer"] for r in table]
                for k in range(1, min(cfg.max_float_layers, len(order)) + 1):
                    opts = dataclasses.replace(chosen["_options"], keep_float=tuple(order[:k]))
                    path = quantize_int8(fp32, array_batches(calibration, 64), tmp / f"fallback{k}.onnx", opts, pre,
                                         tmp / f"ranges-{opts.method}.json")
                    row = {**holdout.measure(path, f"fallback {k}", opts), "_options": opts}
                    files[row["step"]] = path
                    steps.append(row)
                    log(f"[export] int8 fallback step {k}: {', '.join(order[:k])} in float: holdout top-1 "
                        f"{row['holdout_top1']:.4f}, agreement {row['agreement_with_fp32']:.4f}"
                        f"{' - passes' if row['passes'] else ' - fails: ' + row['reason']}")
                    if row["passes"]:
                        break
                final = next((r for r in steps if r["passes"]), None) or _best_failing([chosen, *steps])
                if final is not chosen:
                    chosen, chosen_file = final, files[final["step"]]
        atomic_write_bytes(out_path, chosen_file.read_bytes())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "_options"} for r in rows]  # noqa: E731
    record.update({
        "candidates": strip(candidates), "fallback_steps": strip(steps),
        "chosen": chosen["step"], "passes_on_holdout": chosen["passes"], "reason": chosen["reason"],
        "layers_in_float": list(chosen["_options"].keep_float),
        "options": chosen["_options"].record(len(calibration)),
        "kernels": {k: v for k, v in kernel_counts(out_path).items() if k != "float_nodes"}})
    if not chosen["passes"]:
        log(f"[export] int8: no candidate passes the INT8 gates on the holdout; keeping the best failing one "
            f"({chosen['step']}: {chosen['reason']})")
    return record
