"""The validate report: files, tables, self-containment, escaping, speed, and that the
HTML page really displays every plot in a headless Chromium.

`make_results()` builds a realistic results document: metrics are computed by hand
(numpy) from simulated logits, so reliability bins, histograms and agreement are
mutually consistent the way the harness's would be, without depending on it.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from richkd_deploy.evaluate import plots, report
from richkd_deploy.evaluate.gates import evaluate_gates, exit_code
from richkd_deploy.evaluate.report import render_html, render_markdown, write_reports
from richkd_deploy.recipe import GatesConfig

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
N, K, BINS = 2000, 100, 15


# --------------------------------------------------------------------------- fixture builder


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _clean_metrics(logits: np.ndarray, labels: np.ndarray, threshold: float = 0.9) -> dict[str, Any]:
    p = _softmax(logits)
    conf, pred = p.max(1), p.argmax(1)
    correct = pred == labels
    top5 = (np.argsort(-logits, 1)[:, :5] == labels[:, None]).any(1)
    onehot = np.eye(K)[labels]
    edges = np.linspace(0, 1, BINS + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, BINS - 1)
    count = np.bincount(idx, minlength=BINS)
    bconf = np.bincount(idx, conf, BINS) / np.maximum(count, 1)
    bacc = np.bincount(idx, correct, BINS) / np.maximum(count, 1)
    gaps = np.abs(bacc - bconf)
    order = np.argsort(conf)
    chunks = np.array_split(order, BINS)
    hedges = np.linspace(0, 1, 21)
    hidx = np.clip(np.searchsorted(hedges, conf, side="left") - 1, 0, 19)
    cw = int((correct & (conf >= threshold)).sum())
    ww = int((~correct & (conf >= threshold)).sum())
    return {
        "top1": float(correct.mean()), "top5": float(top5.mean()),
        "nll": float(-np.log(p[np.arange(len(labels)), labels] + 1e-12).mean()),
        "brier": float(((p - onehot) ** 2).sum(1).mean()),
        "ece": float((gaps * count).sum() / len(labels)), "mce": float(gaps[count > 0].max()),
        "adaptive_ece": float(sum(abs(correct[c].mean() - conf[c].mean()) * len(c) for c in chunks) / len(labels)),
        "reliability": {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(), "count": count.tolist(),
                        "confidence": bconf.tolist(), "accuracy": bacc.tolist()},
        "confidence": {"threshold": threshold, "confident_correct": cw, "confident_wrong": ww,
                       "confident_correct_rate": cw / len(labels), "confident_wrong_rate": ww / len(labels)},
        "confidence_hist": {"edges": hedges.tolist(),
                            "correct": np.bincount(hidx[correct], minlength=20).tolist(),
                            "wrong": np.bincount(hidx[~correct], minlength=20).tolist()},
    }


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    pa, pb = _softmax(a), _softmax(b)
    kl = (pb * (np.log(pb + 1e-12) - np.log(pa + 1e-12))).sum(1).mean()
    return {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()), "mean_kl": float(kl)}


def _corruptions(base: float, rng: np.random.Generator) -> dict[str, Any]:
    acc = {c: {str(s): float(np.clip(base - 0.07 * s * rng.uniform(0.3, 1.4), 0.02, 1)) for s in SEVERITIES}
           for c in CORRUPTIONS}
    return {"accuracy": acc, "mean_accuracy": float(np.mean([v for d in acc.values() for v in d.values()]))}


def make_results(*, clip_random: bool = False, gates_cfg: GatesConfig | None = None) -> dict[str, Any]:
    """A results document like the harness writes: student, teacher, two ONNX artifacts
    (fp32 and a visibly worse int8) and a TensorRT engine pending on this machine."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, N)
    hard = 1.2 * rng.normal(0, 1, N)  # per-image difficulty, shared by all models
    noise = rng.normal(0, 1, (N, K))

    def logits(margin: float, scale: float, jitter: float) -> np.ndarray:
        z = noise + jitter * rng.normal(0, 1, (N, K))
        z[np.arange(N), labels] += margin + hard
        return scale * z

    student = logits(3.7, 3.3, 0.0)  # ~75 % top-1, somewhat over-confident
    teacher = logits(4.3, 2.6, 0.5)  # better and under-confident
    onnx = student + rng.normal(0, 1e-4, (N, K))  # fp32 export: numerically the same
    int8 = 1.05 * student + rng.normal(0, 0.6, (N, K))  # quantisation damage: fails some gates

    def row(name: str, role: str, backend: str, precision: str, logits: np.ndarray) -> dict[str, Any]:
        clean = _clean_metrics(logits, labels)
        return {
            "name": name, "role": role, "file": f"export/{name}" if role == "artifact" else f"{name}.pt",
            "backend": backend, "precision": precision, "status": "ok", "reason": None, "clean": clean,
            "agreement": {"student": None if role == "student" else _agreement(logits, student),
                          "teacher": None if role == "teacher" else _agreement(logits, teacher)},
            "calibration": {"temperature": 1.0 + rng.uniform(0, 0.8), "ece_before": clean["ece"],
                            "ece_after": clean["ece"] * 0.3, "nll_before": clean["nll"], "nll_after": clean["nll"] * 0.95},
            "corruptions": _corruptions(clean["top1"], rng),
        }

    rows = [
        row("torch-fp32", "student", "torch", "fp32", student),
        row("teacher", "teacher", "torch", "fp32", teacher),
        row("model.onnx", "artifact", "onnxruntime-cpu", "fp32", onnx),
        row("model.int8.onnx", "artifact", "onnxruntime-cpu", "int8", int8),
        {"name": "model.fp16.engine", "role": "artifact", "file": "export/model.fp16.engine", "backend": "tensorrt",
         "precision": "fp16", "status": "pending", "reason": "no TensorRT here (install the [trt] extra on a CUDA machine)",
         "clean": None, "agreement": None, "calibration": None, "corruptions": None},
    ]
    rows[2]["corruptions"] = json.loads(json.dumps(rows[0]["corruptions"]))  # fp32 ONNX == torch
    gate_results = evaluate_gates(rows, gates_cfg or GatesConfig())
    return {
        "schema": "richkd-deploy/validate/1", "run": "edge-cifar100", "recipe_hash": "ab12cd34" * 8,
        "created_at": "2026-03-01T12:00:00+00:00", "version": "0.1.0", "clip_random": clip_random,
        "dataset": {"name": "cifar100", "test_samples": N, "corruption_samples": 500, "severities": list(SEVERITIES),
                    "corruptions": list(CORRUPTIONS), "frost_source": "procedural", "corruption_source": "generated"},
        "rows": rows, "gates": gate_results, "exit_code": exit_code(gate_results),
    }


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return make_results(clip_random=True)


@pytest.fixture
def doc(results: dict[str, Any]) -> dict[str, Any]:
    """A private copy of the module's document, for tests that change it."""
    return copy.deepcopy(results)


# A valid 1x1 PNG: content-only tests stub the plots out, they are the slow part.
_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
def stub_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("reliability_png", "confidence_hist_png", "corruption_heatmap_png"):
        monkeypatch.setattr(report.plots, name, lambda data, *a, **k: _PIXEL if data else None)


@pytest.fixture(scope="module")
def written(results: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """The reports of `results`, written once for the module, and the CPU seconds it took."""
    out = tmp_path_factory.mktemp("eval")
    t0 = time.process_time()
    md, page = write_reports(results, out)
    return md, page, time.process_time() - t0


# --------------------------------------------------------------------------- html helpers


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Checker(HTMLParser):
    """Collects images and URL attributes and checks that non-void tags nest and close."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.imgs: list[dict[str, str | None]] = []
        self.urls: list[str] = []
        self.ids: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.append(str(a["id"]))
        for key in ("src", "href", "action", "poster", "srcset"):
            if a.get(key):
                self.urls.append(str(a[key]))
        if tag == "img":
            self.imgs.append(a)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Checker:
    c = _Checker()
    c.feed(page)
    c.close()
    return c


# --------------------------------------------------------------------------- files and content


def test_write_reports_writes_both_files_atomically(written: tuple[Path, Path, float]) -> None:
    md, page, _ = written
    assert md.name == "report.md" and page.name == "report.html" and md.parent == page.parent
    assert md.stat().st_size > 0 and page.stat().st_size > 0
    assert sorted(p.name for p in md.parent.iterdir()) == ["report.html", "report.md"]  # no temp files left


def test_report_is_fast(written: tuple[Path, Path, float]) -> None:
    # CPU time, not wall time: on a shared runner wall time measures the neighbours.
    assert written[2] < 5.0, f"write_reports took {written[2]:.2f}s of CPU for 4 evaluated rows"


def test_markdown_has_header_gate_table_verdict_and_pending(results: dict[str, Any], written: tuple[Path, Path, float]) -> None:
    text = written[0].read_text()
    assert text.startswith("# Validate report: edge-cifar100")
    assert "CLIP RANDOM" in text
    assert "| Status | Artifact | Gate | Value | Bound | Message |" in text
    for g in results["gates"]:
        assert re.search(rf"\| \*\*{g['status'].upper()}\*\* \| `{re.escape(g['artifact'])}` \| {g['gate']} \|", text), g
    assert results["exit_code"] == 1  # the int8 artifact is built to fail
    assert "## Verdict: **FAIL: do not ship**" in text
    assert "no TensorRT here" in text and "`model.fp16.engine`" in text
    assert "| Model | Role | Backend | Precision | Status | Top-1 |" in text
    assert "### Corruption accuracy: `model.int8.onnx`" in text
    assert "procedurally generated" in text
    assert "NaN" not in text


def test_html_is_self_contained_and_well_formed(results: dict[str, Any], written: tuple[Path, Path, float]) -> None:
    page = written[1].read_text()
    assert not re.search(r"https?://", page, re.IGNORECASE)
    assert "url(" not in page and "@import" not in page and 'src="//' not in page
    assert page.startswith("<!DOCTYPE html>")
    c = _parse(page)
    assert c.errors == [] and c.stack == []
    assert all(u.startswith("data:image/png;base64,") for u in c.urls), [u[:40] for u in c.urls]
    assert len(c.ids) == len(set(c.ids))
    evaluated = [r for r in results["rows"] if r["status"] == "ok"]
    assert len(c.imgs) == 3 * len(evaluated)  # reliability, confidence, corruptions per row
    for img in c.imgs:
        assert img.get("id") and img.get("alt") and len(str(img["alt"])) > 20
        png = base64.b64decode(str(img["src"]).split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    for row in evaluated:
        slug = re.sub(r"[^a-z0-9]+", "-", row["name"]).strip("-")
        assert {f"reliability-{slug}", f"confidence-{slug}", f"corruptions-{slug}"} <= set(c.ids)
    text = " ".join(c.text)
    assert "CLIP RANDOM" in text and "FAIL: do not ship" in text and "no TensorRT here" in text
    assert 'id="gates"' in page and page.count('class="status fail"') >= 1 and 'class="status pending"' in page


def test_gate_rows_and_values_appear_in_html(results: dict[str, Any], written: tuple[Path, Path, float]) -> None:
    page = written[1].read_text()
    top1 = next(g for g in results["gates"] if g["gate"] == "max_top1_drop" and g["artifact"] == "model.int8.onnx")
    assert f"{100 * top1['value']:+.2f} pp" in page and "≤ +1.00 pp" in page


def test_no_clip_banner_when_clip_is_real(doc: dict[str, Any], stub_plots: None) -> None:
    res = {**doc, "clip_random": False}
    assert "CLIP RANDOM" not in render_markdown(res)
    assert 'id="clip-random"' not in render_html(res)


def test_all_pass_verdict_with_pending(doc: dict[str, Any], stub_plots: None) -> None:
    loose = GatesConfig(max_top1_drop=0.5, min_agreement=0.1, max_ece_increase=0.5, max_corruption_drop=0.5)
    gate_results = evaluate_gates(doc["rows"], loose)
    res = {**doc, "gates": gate_results, "exit_code": exit_code(gate_results)}
    assert res["exit_code"] == 0
    assert "PASS WITH PENDING GATES" in render_markdown(res)
    assert 'class="verdict pending"' in render_html(res)


def test_strings_are_escaped(doc: dict[str, Any], stub_plots: None) -> None:
    res = doc
    evil = '<script>alert(1)</script>|x"'
    res["run"] = evil
    res["rows"][4]["reason"] = evil
    res["rows"][3]["name"] = evil
    page = render_html(res)
    assert "<script>alert" not in page
    assert _parse(page).errors == []
    md = render_markdown(res)
    assert "\\|x" in md  # pipes cannot break the markdown tables


def test_broken_and_partial_rows_render(doc: dict[str, Any], tmp_path: Path) -> None:
    res = doc
    res["rows"][2]["clean"]["ece"] = math.nan
    res["rows"][2]["clean"]["reliability"] = None
    res["rows"][2]["corruptions"] = None
    res["rows"][3]["clean"]["confidence_hist"]["correct"] = [0] * 20
    res["rows"][3]["clean"]["confidence_hist"]["wrong"] = [0] * 20
    res["rows"].append({"name": "model.fp16.onnx", "role": "artifact", "status": "error", "reason": "boom"})
    res["gates"] = evaluate_gates(res["rows"], GatesConfig())
    md, page = write_reports(res, tmp_path)
    html_text = page.read_text()
    c = _parse(html_text)
    assert c.errors == []
    assert len(c.imgs) == 3 * 4 - 2 - 1  # model.onnx lost two plots, int8 its histogram
    assert '<td class="n nan">NaN</td>' in html_text
    assert "boom" in md.read_text() and "boom" in html_text


def test_minimal_document_renders(tmp_path: Path) -> None:
    md, page = write_reports({"run": "empty"}, tmp_path)
    assert "NO GATES" in md.read_text()
    assert _parse(page.read_text()).errors == []


def test_render_failure_leaves_old_reports(doc: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "report.md").write_text("old md")
    (tmp_path / "report.html").write_text("old html")

    def boom(*a: Any, **k: Any) -> bytes:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report.plots, "reliability_png", boom)
    with pytest.raises(RuntimeError):
        write_reports(doc, tmp_path)
    assert (tmp_path / "report.md").read_text() == "old md"
    assert (tmp_path / "report.html").read_text() == "old html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md"]


def test_plots_reject_missing_data_and_are_deterministic(results: dict[str, Any]) -> None:
    clean = results["rows"][0]["clean"]
    assert plots.reliability_png(None, "t") is None
    assert plots.reliability_png({"lower": [0.0], "upper": [1.0], "count": [0], "confidence": [0.5],
                                  "accuracy": [0.5]}, "t") is None
    assert plots.reliability_png({**clean["reliability"], "count": [1, 2]}, "t") is None  # ragged
    assert plots.confidence_hist_png({"edges": [0, 1]}, "t") is None
    assert plots.corruption_heatmap_png({}, "t") is None
    a = plots.reliability_png(clean["reliability"], "t", clean["ece"])
    assert a is not None and a == plots.reliability_png(clean["reliability"], "t", clean["ece"])
    heat = plots.corruption_heatmap_png({"fog": {"1": 0.5, "3": math.nan}, "snow": {"1": 0.2}}, "t")
    assert heat is not None and heat.startswith(b"\x89PNG")


@pytest.mark.parametrize("title", ["Corruption accuracy (%): model.calibrated.onnx",
                                   "Corruption accuracy (%): a-very-long-artifact-name.int8.onnx"])
@pytest.mark.parametrize("names", [("fog",), ("gaussian_noise", "defocus_blur", "jpeg_compression", "elastic_transform")])
def test_corruption_heatmap_is_not_cut_off_at_the_edges(title: str, names: tuple[str, ...]) -> None:
    """Nothing drawn touches the image border: a title wider than the grid once ran off the right edge."""
    png = plots.corruption_heatmap_png({c: {"1": 0.9, "3": 0.5, "5": 0.2} for c in names}, title)
    im = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    for edge in (im[:, :2], im[:, -2:], im[:2, :], im[-2:, :]):
        assert edge.min() == 255, "something is drawn on the image border (cut off)"


# --------------------------------------------------------------------------- headless browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_report_displays_in_headless_chromium(written: tuple[Path, Path, float], results: dict[str, Any]) -> None:
    """Load report.html from file:// and read back what the page's own load script
    recorded on <body>: every <img> decoded (naturalWidth > 0) and no error events,
    CSP violations included."""
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not on PATH (apt-get install chromium; `make setup` does it in CI)")
    page = written[1]
    with tempfile.TemporaryDirectory(prefix="richkd-chromium-") as profile:
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
            "--dump-dom", page.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HOME": profile})
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', body.group(1)))
    n_imgs = 3 * sum(r["status"] == "ok" for r in results["rows"])
    assert attrs.get("loaded") == "1", (attrs, proc.stderr[-2000:])
    assert attrs.get("images") == str(n_imgs)
    assert attrs.get("plots") == str(n_imgs), "some plots did not decode"
    assert attrs.get("errors") == "0"


# --------------------------------------------------------------------------- INT8 sensitivity (issue 15, item 4)


def _manifest_entry(kept_float: bool = True) -> dict[str, Any]:
    """An int8 manifest entry as exporters.int8_tune records it (plain JSON)."""
    layers = [("/model/layer1/layer1.0/conv1/Conv", "model.layer1.0.conv1", 0.031, 0.90),
              ("/model/conv1/Conv", "model.conv1", 0.012, 0.91),
              ("/model/fc/Gemm", "model.fc", 0.004, 0.92)]
    table = []
    for layer, module, kl, acc in layers:
        row: dict[str, Any] = {"layer": layer, "module": module,
                               "quantized_alone": {"holdout_top1": acc, "kl_to_fp32": kl}}
        if kept_float:
            row["kept_float_alone"] = {"holdout_top1": 0.9, "kl_to_fp32": 0.05 - kl}
        table.append(row)
    return {"file": "model.int8.onnx", "precision": "int8",
            "int8_tuning": {"holdout": {"images": 200, "fp32_top1": 0.92}, "sensitivity": table}}


@pytest.mark.parametrize("kept_float", [True, False])
def test_sensitivity_plot_names_every_layer(doc: dict[str, Any], tmp_path: Path, kept_float: bool,
                                            stub_plots: None) -> None:
    from richkd_deploy.evaluate.rows import sensitivity_doc

    entry = _manifest_entry(kept_float)
    int8 = next(r for r in doc["rows"] if r["precision"] == "int8")
    int8["int8_sensitivity"] = sensitivity_doc(json.loads(json.dumps(entry)))
    before = len(_parse(render_html(doc | {"rows": [{k: v for k, v in r.items() if k != "int8_sensitivity"}
                                                   for r in doc["rows"]]})).imgs)
    md, page = write_reports(doc, tmp_path)
    html_text, md_text = page.read_text(), md.read_text()
    c = _parse(html_text)
    assert c.errors == []
    sens = [i for i in c.imgs if str(i.get("id", "")).startswith("sensitivity-")]
    assert len(sens) == 1 and len(c.imgs) == before + 1
    png = base64.b64decode(str(sens[0]["src"]).split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size[1] > 100
    for e in entry["int8_tuning"]["sensitivity"]:
        assert e["layer"] in str(sens[0]["alt"]) and e["module"] in str(sens[0]["alt"])
        assert f"`{e['layer']}`" in md_text and e["module"] in md_text
    assert "+2.00 pp" in md_text  # conv1 of layer1.0 alone in int8: 0.92 -> 0.90


def test_no_sensitivity_table_no_plot(doc: dict[str, Any], tmp_path: Path, stub_plots: None) -> None:
    from richkd_deploy.evaluate.rows import sensitivity_doc

    assert sensitivity_doc({"file": "model.int8.onnx", "int8_tuning": {"holdout": "none: ..."}}) is None
    assert sensitivity_doc({"file": "model.onnx"}) is None
    assert sensitivity_doc({"int8_tuning": {"sensitivity": []}}) is None
    assert plots.sensitivity_png(None, "t") is None
    assert plots.sensitivity_png([{"layer": "a", "quantized_alone": {"kl_to_fp32": math.nan}}], "t") is None
    md, page = write_reports(doc, tmp_path)
    assert "sensitivity-" not in page.read_text() and "INT8 sensitivity per layer" not in md.read_text()
