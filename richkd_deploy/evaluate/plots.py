"""The validate report's plots, rendered to PNG bytes from the results document.

The figures are built with `matplotlib.figure.Figure` and rendered through the Agg
canvas directly, never through pyplot: pyplot keeps a global registry of open
figures (a leak in a long-lived process) and would switch the user's interactive
backend. A Figure that nothing references is freed by the garbage collector, so
there is nothing to close.

Every function takes plain dicts/lists as stored in results.json (not numpy arrays
from the harness), so the report can be re-rendered later from the JSON file alone.
Each returns None when its input is missing or has nothing plottable, and the report
then leaves the plot out rather than drawing an empty or misleading axis.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.textpath import TextPath

_DPI = 100
_GREEN = "#2e7d32"
_RED = "#c62828"
_BLUE = "#1565c0"
# Fixed axes rectangles instead of tight_layout, which costs a whole extra draw per
# figure (the report must render in a few seconds on a 2-core CI runner).
_AXES = (0.15, 0.12, 0.80, 0.80)


def _floats(values: Any, n: int | None = None) -> list[float] | None:
    """A list of floats (NaN for holes), or None when `values` is not a usable list."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        return None
    out = []
    for v in values:
        out.append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan)
    if n is not None and len(out) != n:
        return None
    return out


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software"/date metadata: identical inputs give identical bytes.
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _text_inches(text: str, fontsize: float) -> float:
    """Width of `text` in inches in matplotlib's default font, without drawing a figure."""
    return TextPath((0, 0), text, size=fontsize).get_extents().width / 72.0


def reliability_png(reliability: Mapping[str, Any] | None, title: str, ece: float | None = None) -> bytes | None:
    """Reliability diagram: accuracy per confidence bin as bars against the diagonal.

    The red hatched part of each bar is the gap between the bin's mean confidence and
    its accuracy (over-confidence when above the bar), the quantity ECE averages.
    Empty bins are not drawn: a zero-height bar would read as "0 % accurate".
    """
    if not isinstance(reliability, Mapping):
        return None
    lower = _floats(reliability.get("lower"))
    if not lower:
        return None
    n = len(lower)
    upper = _floats(reliability.get("upper"), n)
    count = _floats(reliability.get("count"), n)
    conf = _floats(reliability.get("confidence"), n)
    acc = _floats(reliability.get("accuracy"), n)
    if upper is None or count is None or conf is None or acc is None:
        return None
    keep = [
        i for i in range(n)
        if count[i] > 0 and all(math.isfinite(v) for v in (lower[i], upper[i], conf[i], acc[i]))
    ]
    if not keep:
        return None
    fig = Figure(figsize=(4.4, 4.0))
    ax = fig.add_axes(_AXES)
    x = [lower[i] for i in keep]
    w = [upper[i] - lower[i] for i in keep]
    a = [acc[i] for i in keep]
    gap = [conf[i] - acc[i] for i in keep]
    ax.bar(x, a, width=w, align="edge", color=_BLUE, edgecolor="white", linewidth=0.6, label="accuracy")
    ax.bar(x, gap, bottom=a, width=w, align="edge", color=_RED, alpha=0.35, hatch="//",
           edgecolor=_RED, linewidth=0.6, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="0.3", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_aspect("equal")
    if ece is not None and math.isfinite(ece):
        title = f"{title} (ECE {100 * ece:.2f}%)"
    ax.set_title(title, fontsize=10)
    # Upper left (low confidence, high accuracy) is the corner bars rarely reach.
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def confidence_hist_png(hist: Mapping[str, Any] | None, title: str, threshold: float | None = None) -> bytes | None:
    """Histogram of max-softmax confidence, correct and wrong predictions side by side.

    Wrong predictions at high confidence are the ones an edge deployment cannot
    catch with a threshold; the dashed line marks the recipe's threshold.
    """
    if not isinstance(hist, Mapping):
        return None
    edges = _floats(hist.get("edges"))
    if not edges or len(edges) < 2:
        return None
    nb = len(edges) - 1
    correct = _floats(hist.get("correct"), nb)
    wrong = _floats(hist.get("wrong"), nb)
    if correct is None or wrong is None or not any(v > 0 for v in correct + wrong):
        return None
    fig = Figure(figsize=(4.4, 4.0))
    ax = fig.add_axes(_AXES)
    left = edges[:-1]
    half = [(edges[i + 1] - edges[i]) / 2 for i in range(nb)]
    correct = [0.0 if math.isnan(v) else v for v in correct]
    wrong = [0.0 if math.isnan(v) else v for v in wrong]
    ax.bar(left, correct, width=half, align="edge", color=_GREEN, label="correct")
    ax.bar([lo + h for lo, h in zip(left, half, strict=True)], wrong, width=half, align="edge", color=_RED, label="wrong")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="0.2", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("confidence (max softmax)")
    ax.set_ylabel("test images")
    ax.set_title(title, fontsize=10)
    # Put the legend over the side with fewer images ("best" costs a search per figure).
    total = sum(correct) + sum(wrong)
    mean_conf = sum((lo + h) * (c + w) for lo, h, c, w in zip(left, half, correct, wrong, strict=True)) / total
    ax.legend(loc="upper left" if mean_conf >= 0.5 else "upper right", fontsize=8)
    return _png(fig)


def _severity_key(s: str) -> tuple[int, float | str]:
    try:
        return (0, float(s))
    except ValueError:
        return (1, s)


def corruption_heatmap_png(accuracy: Mapping[str, Any] | None, title: str) -> bytes | None:
    """Accuracy per corruption (rows, in the harness's order) x severity (columns).

    A fixed 0..1 colour scale keeps heatmaps of different artifacts comparable by eye;
    each cell is annotated with its accuracy in percent.
    """
    if not isinstance(accuracy, Mapping) or not accuracy:
        return None
    names = [str(c) for c, sev in accuracy.items() if isinstance(sev, Mapping) and sev]
    if not names:
        return None
    severities = sorted({str(s) for c in names for s in accuracy[c]}, key=_severity_key)
    grid = []
    for c in names:
        sev = accuracy[c]
        grid.append([
            float(v) if isinstance(v := sev.get(s), int | float) and not isinstance(v, bool) else math.nan
            for s in severities
        ])
    # Size the figure around a fixed-size grid; margins in inches fit the labels, measured
    # as laid out in the font (a title wider than the grid once ran off the right edge).
    left_in = 0.25 + max(_text_inches(c, 8) for c in names)
    grid_w, grid_h = 0.6 * len(severities), 0.28 * len(names)
    right_in, top_in, bottom_in = 0.25, 0.4, 0.55
    width = max(left_in + grid_w + right_in, left_in + _text_inches(title, 10) + 0.15)
    height = bottom_in + grid_h + top_in
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left_in / width, bottom_in / height, grid_w / width, grid_h / height))
    # Every cell is annotated with its value, so no colorbar (an extra axis to lay out).
    ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(severities)), severities)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("severity")
    ax.set_title(title, fontsize=10, loc="left")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            text = "n/a" if math.isnan(v) else f"{100 * v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    return _png(fig)


def _kl(entry: Any, mode: str) -> float | None:
    v = entry.get(mode) if isinstance(entry, Mapping) else None
    kl = v.get("kl_to_fp32") if isinstance(v, Mapping) else None
    return float(kl) if isinstance(kl, int | float) and not isinstance(kl, bool) and math.isfinite(kl) else None


def sensitivity_label(entry: Mapping[str, Any]) -> str:
    """'onnx node (torch module)' for a sensitivity row; the node name alone when the
    module is unknown or the same."""
    layer, module = str(entry.get("layer", "?")), entry.get("module")
    return f"{layer} ({module})" if module and str(module) != layer else layer


def sensitivity_png(table: Sequence[Any] | None, title: str, fp32_top1: float | None = None) -> bytes | None:
    """Per-layer INT8 sensitivity (the export manifest's `int8_tuning.sensitivity`): one
    horizontal bar per Conv/Gemm, the KL(FP32 || INT8) on the holdout with that layer
    alone quantized, in the table's order (most sensitive first); with the "kept in float
    alone" measurement too, a second bar per layer. With `fp32_top1`, each bar is
    annotated with the holdout top-1 drop in points, the figure the INT8 gates judge.
    KL is drawn rather than top-1 because a single layer rarely moves top-1 on a small
    holdout, while KL still ranks the layers (it is what the fallback ranks by)."""
    if not isinstance(table, Sequence) or isinstance(table, str):
        return None
    rows = [e for e in table if isinstance(e, Mapping) and _kl(e, "quantized_alone") is not None]
    if not rows:
        return None
    both = all(_kl(e, "kept_float_alone") is not None for e in rows)
    labels = [sensitivity_label(e) for e in rows]
    n, per = len(rows), (0.5 if both else 0.3)
    left_in = 0.3 + max(_text_inches(s, 8) for s in labels)
    plot_w, top_in, bottom_in = 4.2, 0.45, 0.6
    right_in = 0.3 + _text_inches("only this layer in float", 7) + 0.6  # the legend sits right of the axes
    width = max(left_in + plot_w + right_in, left_in + _text_inches(title, 10) + 0.2)
    height = bottom_in + per * n + top_in + 0.2
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left_in / width, bottom_in / height, plot_w / width, (per * n + 0.2) / height))
    y = list(range(n))
    h = 0.4 if both else 0.7
    q = [_kl(e, "quantized_alone") or 0.0 for e in rows]
    ax.barh([i - (h / 2 if both else 0) for i in y], q, height=h, color=_RED, label="only this layer in int8")
    if both:
        f = [_kl(e, "kept_float_alone") or 0.0 for e in rows]
        ax.barh([i + h / 2 for i in y], f, height=h, color=_BLUE, label="only this layer in float")
    top = max(q + (f if both else [])) or 1.0
    ax.set_xlim(0, top * 1.3)
    if fp32_top1 is not None and math.isfinite(fp32_top1):
        for i, e in enumerate(rows):
            acc = e["quantized_alone"].get("holdout_top1")
            if isinstance(acc, int | float) and not isinstance(acc, bool):
                ax.text(q[i] + top * 0.02, i - (h / 2 if both else 0), f"{100 * (fp32_top1 - acc):+.2f} pp",
                        va="center", fontsize=7, color="0.2")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()  # most sensitive at the top
    ax.set_xlabel("KL(FP32 || INT8) on the holdout, nats")
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return _png(fig)
