"""Render the validate results document as report.md and a self-contained report.html.

The report is what a reviewer reads before an edge model ships, often as a CI
artifact opened offline or attached to a ticket, so:

- report.html is one file: inline CSS, plots as inline base64 PNGs, a tiny inline
  script, and a Content-Security-Policy that forbids fetching anything. It contains
  no http(s) URL, so it renders the same offline and leaks nothing when opened.
- Everything comes from the results document (results.json) alone, so a report can be
  re-rendered from an old run without the models or data.
- Every string from the document is escaped: artifact names, reasons and paths come
  from the file system and from exception messages.
- The inline script only records, on the <body>, how many images decoded and how
  many errors happened (`data-plots`, `data-images`, `data-errors`), so a headless
  browser can check that the page really displays; it changes nothing visible.
- Missing values render as an em dash, NaN as "NaN" (highlighted): the report shows
  the document as it is and never hides a broken metric.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from richkd_deploy.evaluate import gates as gates_mod
from richkd_deploy.evaluate import plots
from richkd_deploy.runs import atomic_write_text

DASH = "\u2014"

# (header, path into the row, kind) for the per-row summary tables: clean accuracy and
# calibration first, then agreement, robustness and temperature scaling (one table of
# 19 columns does not fit a screen).
Column = tuple[str, tuple[str, ...], str]
_CLEAN_COLUMNS: tuple[Column, ...] = (
    ("Top-1", ("clean", "top1"), "pct"),
    ("Top-5", ("clean", "top5"), "pct"),
    ("NLL", ("clean", "nll"), "num"),
    ("Brier", ("clean", "brier"), "num"),
    ("ECE", ("clean", "ece"), "pct"),
    ("MCE", ("clean", "mce"), "pct"),
    ("Adaptive ECE", ("clean", "adaptive_ece"), "pct"),
    ("Confident wrong", ("clean", "confidence", "confident_wrong_rate"), "pct"),
)
_MORE_COLUMNS: tuple[Column, ...] = (
    ("Agree student", ("agreement", "student", "top1_agreement"), "pct"),
    ("KL student", ("agreement", "student", "mean_kl"), "num"),
    ("Agree teacher", ("agreement", "teacher", "top1_agreement"), "pct"),
    ("Corruption acc", ("corruptions", "mean_accuracy"), "pct"),
    ("Temperature", ("calibration", "temperature"), "temp"),
    ("ECE after T", ("calibration", "ece_after"), "pct"),
    ("NLL after T", ("calibration", "nll_after"), "num"),
)
_TABLES: tuple[tuple[str, str, tuple[Column, ...], bool], ...] = (
    # (id, heading, columns, with the identity columns)
    ("models", "Clean accuracy and calibration", _CLEAN_COLUMNS, True),
    ("models-more", "Agreement, corruption robustness and temperature scaling", _MORE_COLUMNS, False),
)
_IDENTITY = ("Model", "Role", "Backend", "Precision", "Status")

_CSS = """
:root { --pass:#137333; --pass-bg:#e6f4ea; --fail:#a50e0e; --fail-bg:#fce8e6;
        --pend:#7a4f00; --pend-bg:#fef3d6; --line:#d0d7de; --muted:#57606a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color:#1f2328; margin:0 auto; padding:24px; max-width:1480px; }
h1 { font-size:22px; margin:0 0 12px; } h2 { font-size:18px; margin:28px 0 10px;
     border-bottom:1px solid var(--line); padding-bottom:4px; } h3 { font-size:15px; margin:18px 0 8px; }
.muted { color:var(--muted); font-weight:normal; }
table { border-collapse:collapse; margin:6px 0 12px; }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
th { background:#f6f8fa; } td.n { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.scroll { overflow-x:auto; }
.meta th { width:170px; }
.status { font-weight:600; text-transform:uppercase; font-size:12px; white-space:nowrap; }
.pass { color:var(--pass); background:var(--pass-bg); }
.fail { color:var(--fail); background:var(--fail-bg); }
.pending { color:var(--pend); background:var(--pend-bg); }
.nan { color:var(--fail); font-weight:600; }
.verdict { padding:12px 16px; border-radius:6px; font-size:17px; font-weight:600; margin:12px 0; }
.verdict small { font-weight:normal; font-size:14px; display:block; margin-top:2px; }
.banner { padding:10px 14px; border-radius:6px; margin:10px 0; border:2px solid var(--fail);
          background:var(--fail-bg); color:var(--fail); font-weight:600; }
.note { padding:8px 12px; border-left:4px solid var(--pend); background:var(--pend-bg); margin:8px 0; }
.plots { display:flex; flex-wrap:wrap; gap:12px; align-items:flex-start; }
figure { margin:0; border:1px solid var(--line); border-radius:6px; padding:6px; background:#fff; }
figure img { display:block; max-width:100%; height:auto; }
figcaption { font-size:12px; color:var(--muted); margin-top:4px; max-width:440px; }
code { font-size:12px; background:#f6f8fa; padding:1px 4px; border-radius:4px; }
"""

# Records load health on <body> for headless checks; see the module docstring.
_SCRIPT = """
(function () {
  var errors = 0;
  function bump() { errors++; if (document.body) document.body.setAttribute("data-errors", String(errors)); }
  window.addEventListener("error", bump, true);
  document.addEventListener("securitypolicyviolation", bump);
  window.addEventListener("load", function () {
    var imgs = document.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
    var b = document.body;
    b.setAttribute("data-images", String(imgs.length));
    b.setAttribute("data-plots", String(ok));
    b.setAttribute("data-errors", String(errors));
    b.setAttribute("data-loaded", "1");
  });
})();
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


# --------------------------------------------------------------------------- values


def _get(obj: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def _fmt(x: Any, kind: str) -> str:
    """Format a value for a table cell; fractions are shown in percent."""
    v = _num(x)
    if v is None:
        return DASH if x is None else str(x)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if kind == "pct":
        return f"{100 * v:.2f}%"
    if kind == "pp":
        return f"{100 * v:+.2f} pp"
    if kind == "temp":
        return f"{v:.3f}"
    return f"{v:.4f}"


def _gate_kind(gate: str) -> str:
    spec = gates_mod.GATE_SPECS.get(gate)
    if spec is None:
        return "num"
    return "pct" if spec.unit == "fraction" else "pp"


def _gate_bound(r: Mapping[str, Any]) -> str:
    spec = gates_mod.GATE_SPECS.get(str(r.get("gate")))
    text = _fmt(r.get("bound"), _gate_kind(str(r.get("gate"))))
    if spec is None:
        return text
    return f"{'≤' if spec.op == '<=' else '≥'} {text}"


def _status(r: Mapping[str, Any]) -> str:
    st = r.get("status")
    return st if st in ("pass", "fail", "pending") else "fail"


def _headers(columns: Sequence[Column], threshold: float | None) -> list[str]:
    return [f"{h} @{threshold:g}" if h == "Confident wrong" and threshold is not None else h for h, _, _ in columns]


def _evaluated(row: Mapping[str, Any]) -> bool:
    return row.get("status") == "ok" and isinstance(row.get("clean"), Mapping)


def _row_name(row: Mapping[str, Any]) -> str:
    return str(row.get("name") or row.get("file") or "?")


def _threshold(rows: Sequence[Mapping[str, Any]]) -> float | None:
    for row in rows:
        t = _num(_get(row, ("clean", "confidence", "threshold")))
        if t is not None:
            return t
    return None


def _dataset_lines(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, plain text) lines describing the data, plus notes on non-standard sources."""
    ds = results.get("dataset") if isinstance(results.get("dataset"), Mapping) else {}
    out = [("Dataset", str(ds.get("name") or DASH)), ("Test images", str(ds.get("test_samples", DASH)))]
    corr = ds.get("corruptions") or []
    sev = ds.get("severities") or []
    if corr:
        out.append(("Corruptions", f"{len(corr)} ({', '.join(map(str, corr))})"))
        out.append(("Severities", ", ".join(map(str, sev)) or DASH))
        out.append(("Images per corruption cell", str(ds.get("corruption_samples", DASH))))
        src = ds.get("corruption_source")
        out.append(("Corruption source", "generated on the fly" if src == "generated" else f"pre-generated: {src}"))
        if ds.get("frost_source") is not None:
            out.append(("Frost textures", str(ds.get("frost_source"))))
    else:
        out.append(("Corruptions", "not evaluated"))
    return out


def _notes(results: Mapping[str, Any]) -> list[str]:
    ds = results.get("dataset") if isinstance(results.get("dataset"), Mapping) else {}
    notes = []
    if ds.get("frost_source") == "procedural":
        notes.append(
            "Frost uses procedurally generated textures (the reference frost images were not available): "
            "frost accuracies are not comparable with published corruption benchmarks."
        )
    if ds.get("calibration"):
        notes.append(f"Calibration: {ds['calibration']}.")
    return notes


_CLIP_RANDOM = (
    "CLIP RANDOM: this run used randomly initialised CLIP weights. The CLIP supervision was noise; "
    "these numbers test the pipeline and say nothing about RichKD. Do not ship this model."
)


def _verdict_text(gate_results: Sequence[Mapping[str, Any]]) -> tuple[str, str, str]:
    """(css class, headline, detail) for the overall verdict."""
    if not gate_results:
        return "pending", "NO GATES", "no gate is enabled in validate.gates; nothing was checked (exit code 0)"
    c = gates_mod.counts(gate_results)
    v = gates_mod.verdict(gate_results)
    detail = f"{c['pass']} passed, {c['fail']} failed, {c['pending']} pending; exit code {gates_mod.exit_code(gate_results)}"
    head = {
        "pass": "PASS: all gates hold",
        "fail": "FAIL: do not ship",
        "pending": "PASS WITH PENDING GATES: no gate failed, but some were not checked",
    }[v]
    return v, head, detail


def _noise_note(gate_results: Sequence[Mapping[str, Any]]) -> str | None:
    """A sentence naming the gates that pass only inside the test set's noise, or None."""
    noisy = [r for r in gate_results if r.get("noise") and r.get("status") == "pass"]
    if not noisy:
        return None
    names = ", ".join(f"{r.get('gate')} ({r.get('artifact')})" for r in noisy)
    return (f"{len(noisy)} gate(s) pass only inside the noise: their 95% interval contains the bound, so a larger "
            f"test set could fail them: {names}.")


def _gate_results(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    g = results.get("gates")
    return [r for r in g if isinstance(r, Mapping)] if isinstance(g, list) else []


def _rows(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    rows = results.get("rows")
    return [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []


# --------------------------------------------------------------------------- markdown


def _md(text: Any) -> str:
    """Escape a value for a markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(results: Mapping[str, Any]) -> str:
    """The report as GitHub-flavoured markdown: the same tables as the HTML, no plots."""
    rows = _rows(results)
    gate_results = _gate_results(results)
    out: list[str] = [f"# Validate report: {_md(results.get('run', DASH))}", ""]
    if results.get("clip_random"):
        out += [f"> **WARNING — {_CLIP_RANDOM}**", ""]
    out += ["| | |", "|---|---|"]
    meta = [
        ("Run", results.get("run", DASH)),
        ("Created", results.get("created_at", DASH)),
        ("richkd-deploy", results.get("version", DASH)),
        ("Recipe hash", f"`{str(results.get('recipe_hash', DASH))[:16]}`"),
        *_dataset_lines(results),
    ]
    out += [f"| {_md(k)} | {_md(v)} |" for k, v in meta]
    out.append("")
    for n in _notes(results):
        out += [f"> Note: {n}", ""]

    cls, head, detail = _verdict_text(gate_results)
    out += [f"## Verdict: **{head}**", "", detail, ""]
    if (noise := _noise_note(gate_results)) is not None:
        out += [f"> Note: {noise}", ""]
    out += ["## Gates", ""]
    if gate_results:
        out += ["| Status | Artifact | Gate | Value | Bound | Message |", "|---|---|---|---:|---:|---|"]
        for r in gate_results:
            st = _status(r).upper()
            out.append(
                f"| **{st}** | `{_md(r.get('artifact'))}` | {_md(r.get('gate'))} | "
                f"{_fmt(r.get('value'), _gate_kind(str(r.get('gate'))))} | {_md(_gate_bound(r))} | {_md(r.get('message', ''))} |"
            )
    else:
        out.append("No gate is enabled.")
    out.append("")

    thr = _threshold(rows)
    out += ["## Models", ""]
    for _, heading, columns, identity in _TABLES:
        ident = _IDENTITY if identity else _IDENTITY[:1]
        heads = list(ident) + _headers(columns, thr)
        out += [f"**{heading}**", "", "| " + " | ".join(heads) + " |",
                "|" + "---|" * len(ident) + "---:|" * len(columns)]
        for row in rows:
            cells = [f"`{_md(_row_name(row))}`", _md(row.get("role", DASH)), _md(row.get("backend", DASH)),
                     _md(row.get("precision", DASH)), _md(row.get("status", DASH))][: len(ident)]
            cells += [_fmt(_get(row, path), kind) for _, path, kind in columns]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")

    not_run = [r for r in rows if not _evaluated(r)]
    if not_run:
        out += ["## Not evaluated here", ""]
        for r in not_run:
            out.append(
                f"- `{_md(_row_name(r))}` ({_md(r.get('backend', '?'))}, {_md(r.get('precision', '?'))}, "
                f"status {_md(r.get('status'))}): {_md(r.get('reason') or 'no reason given')}"
            )
        out.append("")

    for row in rows:
        acc = _get(row, ("corruptions", "accuracy"))
        if not (_evaluated(row) and isinstance(acc, Mapping) and acc):
            continue
        sev = sorted({str(s) for v in acc.values() if isinstance(v, Mapping) for s in v}, key=plots._severity_key)
        out += [f"### Corruption accuracy: `{_md(_row_name(row))}`", ""]
        out += ["| Corruption | " + " | ".join(f"sev {s}" for s in sev) + " |", "|---|" + "---:|" * len(sev)]
        for c, by_sev in acc.items():
            if isinstance(by_sev, Mapping):
                out.append(f"| {_md(c)} | " + " | ".join(_fmt(by_sev.get(s), "pct") for s in sev) + " |")
        out.append("")
    for row in rows:
        sens = row.get("int8_sensitivity")
        layers = sens.get("layers") if isinstance(sens, Mapping) else None
        if not isinstance(layers, list) or not layers:
            continue
        fp32 = _num(sens.get("fp32_top1"))
        out += [f"### INT8 sensitivity per layer: `{_md(_row_name(row))}`", "",
                "Holdout KL to FP32 and top-1 with only this layer in int8 / only this layer kept in float.", "",
                "| Layer (ONNX node) | Torch module | KL, int8 alone | Top-1 drop, int8 alone "
                "| KL, float alone | Top-1 drop, float alone |", "|---|---|---:|---:|---:|---:|"]
        for e in layers:
            if not isinstance(e, Mapping):
                continue
            cells = []
            for mode in ("quantized_alone", "kept_float_alone"):
                m = e.get(mode) if isinstance(e.get(mode), Mapping) else {}
                acc = _num(m.get("holdout_top1"))
                cells += [_fmt(m.get("kl_to_fp32"), "num"),
                          _fmt(fp32 - acc, "pp") if fp32 is not None and acc is not None else DASH]
            out.append(f"| `{_md(e.get('layer', '?'))}` | {_md(e.get('module') or DASH)} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["Plots (reliability diagrams, confidence histograms, corruption heatmaps, INT8 sensitivity) are in "
            "`report.html`.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- html


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _cell(x: Any, kind: str) -> str:
    text = _fmt(x, kind)
    cls = "n nan" if text == "NaN" else "n"
    return f'<td class="{cls}">{_h(text)}</td>'


class _Ids:
    """Unique, HTML-safe element ids derived from row names."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, kind: str, name: str) -> str:
        base = f"{kind}-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "row")
        ident, i = base, 2
        while ident in self.seen:
            ident, i = f"{base}-{i}", i + 1
        self.seen.add(ident)
        return ident


def _img(png: bytes, ident: str, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img id="{_h(ident)}" alt="{_h(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_h(caption)}</figcaption></figure>"
    )


def _row_plots(row: Mapping[str, Any], ids: _Ids) -> str:
    name = _row_name(row)
    clean = row.get("clean") or {}
    figs: list[str] = []
    ece = _num(clean.get("ece"))
    png = plots.reliability_png(clean.get("reliability"), f"Reliability: {name}", ece)
    if png:
        figs.append(_img(
            png, ids("reliability", name),
            f"Reliability diagram for {name}: accuracy per confidence bin against the diagonal, ECE {_fmt(ece, 'pct')}",
            "Bars: accuracy per confidence bin; red hatch: gap to the bin's mean confidence; dashed: perfect calibration.",
        ))
    thr = _num(_get(clean, ("confidence", "threshold")))
    png = plots.confidence_hist_png(clean.get("confidence_hist"), f"Confidence: {name}", thr)
    if png:
        figs.append(_img(
            png, ids("confidence", name),
            f"Confidence histogram for {name}: correct and wrong predictions per confidence bin",
            f"Correct (green) and wrong (red) predictions by confidence; dashed: threshold {f'{thr:g}' if thr is not None else DASH}.",
        ))
    corr = row.get("corruptions") if isinstance(row.get("corruptions"), Mapping) else {}
    mean = corr.get("mean_accuracy")
    png = plots.corruption_heatmap_png(corr.get("accuracy"), f"Corruption accuracy (%): {name}")
    if png:
        figs.append(_img(
            png, ids("corruptions", name),
            f"Corruption by severity accuracy heatmap for {name}, mean {_fmt(mean, 'pct')}",
            f"Accuracy per corruption and severity; mean {_fmt(mean, 'pct')}.",
        ))
    sens = row.get("int8_sensitivity") if isinstance(row.get("int8_sensitivity"), Mapping) else {}
    layers = sens.get("layers")
    png = plots.sensitivity_png(layers, f"INT8 sensitivity per layer: {name}", _num(sens.get("fp32_top1")))
    if png:
        names = ", ".join(plots.sensitivity_label(e) for e in layers if isinstance(e, Mapping))
        figs.append(_img(
            png, ids("sensitivity", name),
            f"Per-layer INT8 sensitivity for {name}, most sensitive first: {names}",
            "KL to FP32 on the export holdout with only this layer in int8 (red) and, when measured, with only "
            "this layer kept in float (blue); labels: ONNX node (torch module); annotations: holdout top-1 drop.",
        ))
    if not figs:
        return ""
    sub = f"{row.get('role', '')} · {row.get('backend', '')} · {row.get('precision', '')}"
    return (
        f'<section class="row-plots"><h3><code>{_h(name)}</code> <span class="muted">{_h(sub)}</span></h3>'
        f'<div class="plots">{"".join(figs)}</div></section>'
    )


def render_html(results: Mapping[str, Any]) -> str:
    """The full self-contained HTML page (see the module docstring for the rules)."""
    rows = _rows(results)
    gate_results = _gate_results(results)
    run = results.get("run", DASH)
    p: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Validate report: {_h(run)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body>",
        f"<h1>Validate report: {_h(run)}</h1>",
    ]
    if results.get("clip_random"):
        p.append(f'<div class="banner" id="clip-random" role="alert">{_h(_CLIP_RANDOM)}</div>')
    meta = [
        ("Run", run),
        ("Created", results.get("created_at", DASH)),
        ("richkd-deploy", results.get("version", DASH)),
        ("Recipe hash", str(results.get("recipe_hash", DASH))[:16]),
        *_dataset_lines(results),
    ]
    p.append('<table class="meta">' + "".join(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in meta) + "</table>")
    p += [f'<div class="note">Note: {_h(n)}</div>' for n in _notes(results)]

    cls, head, detail = _verdict_text(gate_results)
    p.append(f'<div class="verdict {cls}" id="verdict">{_h(head)}<small>{_h(detail)}</small></div>')
    if (noise := _noise_note(gate_results)) is not None:
        p.append(f'<div class="note" id="noise">Note: {_h(noise)}</div>')

    p.append("<h2>Gates</h2>")
    if gate_results:
        p.append('<div class="scroll"><table id="gates"><thead><tr><th>Status</th><th>Artifact</th><th>Gate</th>'
                 "<th>Value</th><th>Bound</th><th>Message</th></tr></thead><tbody>")
        for r in gate_results:
            st = _status(r)
            p.append(
                f'<tr><td class="status {st}">{st}</td><td><code>{_h(r.get("artifact"))}</code></td>'
                f"<td>{_h(r.get('gate'))}</td>{_cell(r.get('value'), _gate_kind(str(r.get('gate'))))}"
                f'<td class="n">{_h(_gate_bound(r))}</td><td>{_h(r.get("message", ""))}</td></tr>'
            )
        p.append("</tbody></table></div>")
    else:
        p.append("<p>No gate is enabled in <code>validate.gates</code>.</p>")

    thr = _threshold(rows)
    p.append("<h2>Models</h2>")
    for table_id, heading, columns, identity in _TABLES:
        heads = list(_IDENTITY if identity else _IDENTITY[:1]) + _headers(columns, thr)
        p.append(f"<h3>{_h(heading)}</h3>")
        p.append(f'<div class="scroll"><table id="{table_id}"><thead><tr>'
                 + "".join(f"<th>{_h(h)}</th>" for h in heads) + "</tr></thead><tbody>")
        for row in rows:
            st = row.get("status")
            st_cls = "pass" if st == "ok" else ("pending" if st == "pending" else "fail")
            ident = f"<td><code>{_h(_row_name(row))}</code></td>"
            if identity:
                ident += (f"<td>{_h(row.get('role', DASH))}</td><td>{_h(row.get('backend', DASH))}</td>"
                          f'<td>{_h(row.get("precision", DASH))}</td><td class="status {st_cls}">{_h(st)}</td>')
            p.append("<tr>" + ident + "".join(_cell(_get(row, path), kind) for _, path, kind in columns) + "</tr>")
        p.append("</tbody></table></div>")
    p.append('<p class="muted">Accuracies, agreement and calibration errors in percent; NLL and Brier per image; '
             "temperature fitted on the calibration holdout.</p>")

    not_run = [r for r in rows if not _evaluated(r)]
    if not_run:
        p.append('<h2>Not evaluated here</h2><ul id="pending">')
        for r in not_run:
            p.append(
                f"<li><code>{_h(_row_name(r))}</code> ({_h(r.get('backend', '?'))}, {_h(r.get('precision', '?'))}, "
                f"status {_h(r.get('status'))}): {_h(r.get('reason') or 'no reason given')}</li>"
            )
        p.append("</ul>")

    ids = _Ids()
    # a sensitivity table comes from export, so it is drawn even when the artifact did not run here
    sections = [s for row in rows if (_evaluated(row) or row.get("int8_sensitivity")) and (s := _row_plots(row, ids))]
    if sections:
        p.append("<h2>Plots</h2>")
        p += sections
    p.append("</body></html>")
    return "\n".join(p) + "\n"


def write_reports(results: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write `out_dir/report.md` and `out_dir/report.html` atomically; return both paths.

    Both are rendered before either is written, so a rendering bug cannot leave a new
    report.md next to a stale report.html.
    """
    out_dir = Path(out_dir)
    md = render_markdown(results)
    page = render_html(results)
    md_path = atomic_write_text(out_dir / "report.md", md)
    html_path = atomic_write_text(out_dir / "report.html", page)
    return md_path, html_path
