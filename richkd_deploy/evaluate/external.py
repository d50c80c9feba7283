"""`richkd-deploy validate --onnx MODEL --data DIR`: the verdict for a classifier trained
elsewhere, without a run folder.

Many users already have a model (torchvision's `torch.onnx.export`, a vendor's
training service) and want only the checks: accuracy, calibration, corruption
robustness and runtime, against gates, in the same results.json and report as a run.
What a run folder would have told us comes from elsewhere:

* the preprocessing: our contract in the ONNX metadata (`exporters.contract`) when
  the file was exported by us, otherwise flags; an assumption we make is said in the
  log and recorded under `preprocess.source`, never silent (a wrong guess costs
  accuracy without an error);
* the class names: the image folder's class folders (`DIR/test` or `DIR/val`), whose
  count must match the model's output size;
* the reference for relative gates: `--reference ref.onnx` (role "student"); without
  one those gates are pending, not passed;
* calibration: there is no held-out split, so no temperature is fitted; the test-set
  ECE/NLL/Brier are reported and the results say why the fit is missing.

Rows, metrics, corruptions and gates are the harness's own functions (`evaluate.rows`,
`evaluate.harness`), so both paths compute the same numbers the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from richkd_deploy import __version__
from richkd_deploy import recipe as recipe_mod
from richkd_deploy.data.imagefolder import ImageFolderIndexed
from richkd_deploy.data.transforms import default_mean_std, eval_transform
from richkd_deploy.errors import ArtifactError, DataError, RecipeError, RichKDError
from richkd_deploy.evaluate import gates as gates_mod
from richkd_deploy.evaluate.harness import SCHEMA, _corruption_suite, _jsonable
from richkd_deploy.evaluate.latency import bench_callables
from richkd_deploy.evaluate.report import write_reports
from richkd_deploy.evaluate.rows import Row, evaluate_clean
from richkd_deploy.runs import atomic_write_json
from richkd_deploy.runtime.base import Runtime
from richkd_deploy.runtime.onnxruntime import OnnxRuntime
from richkd_deploy.runtime.predictions import eval_arrays

Log = Callable[[str], None]

CONTRACT_FORMAT = "richkd-deploy/preprocess/1"  # exporters.contract.CONTRACT_FORMAT (evaluate does not import exporters)
DEFAULT_CROP_RATIO = 0.875  # torchvision/timm ImageNet evaluation: resize 256, centre crop 224
NO_HOLDOUT = ("no held-out split without a run folder: no temperature was fitted; ECE, NLL and Brier are "
              "measured on the test images")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How raw uint8 RGB images become the model's input: x = (pixel / pixel_scale - mean) / std,
    channels in `channel_order`, after a centre crop of `crop_ratio` (None: squash the whole
    image) and a resize to input_size."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float = 255.0
    crop_ratio: float | None = DEFAULT_CROP_RATIO
    channel_order: str = "RGB"
    source: str = "flags"
    assumed: tuple[str, ...] = ()

    def rgb_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) to apply to RGB pixels / 255 that give the same tensor as this
        preprocessing before the channel reorder: (p/s - m)/d == (p/255 - m*s/255)/(d*s/255)."""
        k = self.pixel_scale / 255.0
        mean, std = [m * k for m in self.mean], [d * k for d in self.std]
        if self.channel_order == "BGR":  # mean/std are given in the model's channel order
            mean, std = mean[::-1], std[::-1]
        return tuple(mean), tuple(std)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["assumed"] = list(self.assumed)
        return d


class _ChannelReorder(Runtime):
    """A runtime fed RGB-normalised images that hands its model BGR: the corruption
    suite and the metrics stay in RGB, the model sees its own channel order."""

    def __init__(self, inner: Runtime) -> None:
        self.inner, self.name, self.path = inner, inner.name, inner.path
        self.num_classes, self.input_shape = inner.num_classes, inner.input_shape
        self.max_batch, self.min_batch = inner.max_batch, inner.min_batch

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.predict(np.ascontiguousarray(batch[:, ::-1]))

    def details(self) -> dict[str, Any]:
        return {**self.inner.details(), "channel_order": "BGR"}


def _three(values: Sequence[float] | None, what: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise RichKDError(f"{what}: give 1 or 3 numbers, got {len(vals)}")
    if what.endswith("std") and any(v <= 0 for v in vals):
        raise RichKDError(f"{what}: every value must be positive")
    return vals[0], vals[1], vals[2]


def read_onnx_metadata(path: Path) -> dict[str, Any]:
    """The model's metadata_props (JSON values decoded), or an ArtifactError for a file
    that is not an ONNX model."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ArtifactError(f"{path}: not a readable ONNX model ({first}); give the .onnx file to validate") from None
    out: dict[str, Any] = {}
    for p in proto.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


def load_preprocess_file(path: str | Path) -> dict[str, Any]:
    """`--preprocess FILE`: YAML/JSON with any of input_size, mean, std, pixel_scale,
    crop_ratio, channel_order, or one of our contracts (a `preprocess` metadata value)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RichKDError(f"--preprocess {p}: cannot read it as YAML/JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise RichKDError(f"--preprocess {p}: expected a mapping such as {{input_size: 224, mean: [...], std: [...]}}")
    if data.get("format") == CONTRACT_FORMAT:
        data = _from_contract(data)
    if "crop_ratio" in data and data["crop_ratio"] is None:
        data["crop_ratio"] = "none"  # null in the file: squash the whole image (None would read as "not given")
    known = {"input_size", "mean", "std", "pixel_scale", "crop_ratio", "channel_order"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RichKDError(f"--preprocess {p}: unknown keys {unknown}; use {', '.join(sorted(known))}")
    return data


def _from_contract(c: Mapping[str, Any]) -> dict[str, Any]:
    crop = c.get("crop") or None
    size = c.get("input_size")
    return {"input_size": int(size[0] if isinstance(size, list | tuple) else size), "mean": c.get("mean"),
            "std": c.get("std"), "pixel_scale": float((c.get("pixel_scale") or [0, 255])[1]),
            "crop_ratio": float(crop["ratio"]) if crop else None,
            "channel_order": "RGB"}


def resolve_preprocess(meta: Mapping[str, Any], model_hw: tuple[int, int] | None, flags: Mapping[str, Any],
                       log: Log) -> Preprocess:
    """The preprocessing: flags (given ones) over our metadata contract over assumptions,
    each assumption logged."""
    flags = {k: v for k, v in flags.items() if v is not None}
    contract = meta.get("preprocess")
    base: dict[str, Any] = {}
    source = "flags"
    if isinstance(contract, Mapping) and contract.get("format") == CONTRACT_FORMAT:
        base, source = _from_contract(contract), "metadata"
        over = sorted(k for k in flags if k in base and flags[k] != base[k])
        if over:
            log(f"validate: the flags override the model's preprocessing metadata for {', '.join(over)}")
            source = "metadata+flags"
    merged = {**base, **flags}
    assumed: list[str] = []
    if merged.get("input_size") is None:
        if model_hw is None or model_hw[0] != model_hw[1]:
            raise RichKDError("the model's input size is not fixed in the file and it carries no preprocessing "
                              "metadata; pass --input-size")
        merged["input_size"] = model_hw[0]
    size = int(merged["input_size"])
    if model_hw is not None and model_hw != (size, size):
        raise RichKDError(f"--input-size {size}: the model takes {model_hw[0]}x{model_hw[1]} images; "
                          "pass the model's own size")
    if merged.get("mean") is None or merged.get("std") is None:
        m, s = default_mean_std("imagefolder")
        merged["mean"] = m if merged.get("mean") is None else merged["mean"]
        merged["std"] = s if merged.get("std") is None else merged["std"]
        assumed.append("mean/std: ImageNet's (pass --mean/--std for another normalisation)")
    if "pixel_scale" not in merged:
        merged["pixel_scale"] = 255.0
        assumed.append("pixel scale: 255 (pixels divided by 255 before mean/std; --pixel-scale 1 for 0..255 mean/std)")
    if "crop_ratio" not in merged:
        merged["crop_ratio"] = DEFAULT_CROP_RATIO
        assumed.append(f"crop ratio: {DEFAULT_CROP_RATIO} (centre crop as in ImageNet evaluation; "
                       "--crop-ratio none squashes the whole image)")
    merged.setdefault("channel_order", "RGB")
    order = str(merged["channel_order"]).upper()
    if order not in ("RGB", "BGR"):
        raise RichKDError(f"channel order {merged['channel_order']!r}: use RGB or BGR")
    scale = float(merged["pixel_scale"])
    if not scale > 0:
        raise RichKDError(f"--pixel-scale {scale}: must be positive (255 for pixels in 0..1, 1 for 0..255)")
    crop = merged["crop_ratio"]
    if isinstance(crop, str):
        if crop.strip().lower() in ("none", "null", ""):
            crop = None
        else:
            try:
                crop = float(crop)
            except ValueError:
                raise RichKDError(f"--crop-ratio {crop!r}: give a fraction such as 0.875, or none") from None
    if crop is not None and not 0.25 <= float(crop) <= 1:
        raise RichKDError(f"--crop-ratio {crop}: give a fraction in [0.25, 1], or none to squash the whole image")
    for line in assumed:
        log(f"validate: no preprocessing metadata for it, assuming {line}")
    return Preprocess(size, _three(merged["mean"], "--mean"), _three(merged["std"], "--std"),  # type: ignore[arg-type]
                      scale, None if crop is None else float(crop), order, source, tuple(assumed))


def validate_recipe(recipe_file: str | Path | None, pre: Preprocess, data_root: Path,
                    overrides: Sequence[str] = ()) -> recipe_mod.Recipe:
    """A Recipe holding the `validate:` section of `recipe_file` (other sections are
    ignored: nothing is trained) plus the data keys the corruption suite reads."""
    section: dict[str, Any] = {}
    if recipe_file is not None:
        p = Path(recipe_file)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RecipeError(f"--recipe {p}: cannot read it as YAML ({type(exc).__name__})") from None
        if not isinstance(data, dict) or not isinstance(data.get("validate", {}), dict):
            raise RecipeError(f"--recipe {p}: expected a mapping with a validate: section")
        section = data.get("validate") or {}
    bad = [o for o in overrides if not o.startswith("validate.")]
    if bad:
        raise RecipeError(f"-o {bad[0]}: only validate.* keys apply to validate --onnx")
    data_section = {"dataset": "imagefolder", "root": str(data_root), "input_size": pre.input_size,
                    "eval_crop_ratio": pre.crop_ratio, "mean": list(pre.mean), "std": list(pre.std)}
    return recipe_mod.from_dict({"name": "validate-onnx", "data": data_section, "validate": section},
                                base_dir=Path(recipe_file).parent if recipe_file else ".", overrides=overrides,
                                check_files=False)


def _open(path: Path, provider: str, order: str) -> Runtime:
    rt: Runtime = OnnxRuntime(path, provider=provider)
    return _ChannelReorder(rt) if order == "BGR" else rt


def _model_hw(rt: Runtime) -> tuple[int, int] | None:
    shape = rt.input_shape
    if shape is None:
        return None
    if shape[0] != 3:
        raise ArtifactError(f"{rt.path}: the model takes {shape[0]}-channel images; validate --onnx checks RGB classifiers")
    return int(shape[1]), int(shape[2])


def _check_classes(rt: Runtime, classes: list[str], meta: Mapping[str, Any], size: int, folder: Path) -> None:
    k = rt.num_classes
    if k is None:
        k = int(np.asarray(rt.predict(np.zeros((1, 3, size, size), np.float32))).shape[1])
    if k != len(classes):
        raise DataError(f"{rt.path.name if rt.path else 'the model'} outputs {k} classes but {folder} has "
                        f"{len(classes)} class folders ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); "
                        "point --data at the folder the model was trained for")
    theirs = meta.get("classes")
    if isinstance(theirs, list) and theirs and [str(c) for c in theirs] != classes:
        raise DataError(f"the model's metadata names its classes {theirs[:5]} but {folder} has {classes[:5]} "
                        "(in sorted folder order); rename the class folders to match the model")


def _runtime_check(row: Row, size: int, log: Log) -> None:
    """Batch-1 latency of a live row, the number a deployment on this machine feels."""
    if row.runtime is None:
        return
    stats = bench_callables({"m": row.runtime.predict}, (3, size, size), batch_sizes=(1,), warmup=3, iters=50,
                            budget_s=1.0, min_iters=10)[1]["m"]
    row.doc["latency"] = {"batch1_p50_ms": stats.p50_ms, "batch1_p90_ms": stats.p90_ms, "iters": stats.iters}
    log(f"validate: {row.doc['name']}: batch-1 latency p50 {stats.p50_ms:.2f} ms on {row.doc['backend']}")


def default_out_dir(onnx: Path) -> Path:
    return onnx.with_suffix(".eval")


def validate_onnx(onnx: str | Path, data: str | Path, reference: str | Path | None = None,
                  preprocess: Mapping[str, Any] | None = None, recipe_file: str | Path | None = None,
                  overrides: Sequence[str] = (), out: str | Path | None = None, provider: str = "cpu",
                  limit: int | None = None, quiet: bool = False, log: Log = print) -> dict[str, Any]:
    """Validate an ONNX classifier on an image folder; write results.json and the
    reports under `out` (default `<model>.eval/`) and return the results document."""
    onnx = Path(onnx)
    data_root = Path(data)
    for what, p in (("--onnx", onnx), ("--reference", Path(reference) if reference else None)):
        if p is not None and not p.is_file():
            raise ArtifactError(f"{what} {p}: no such file; give the path of an .onnx model")
    meta = read_onnx_metadata(onnx)
    if reference is not None:
        read_onnx_metadata(Path(reference))
    model = OnnxRuntime(onnx, provider=provider)
    pre = resolve_preprocess(meta, _model_hw(model), dict(preprocess or {}), log)
    rec = validate_recipe(recipe_file, pre, data_root, overrides)
    v = rec.validate
    test = ImageFolderIndexed.from_root(data_root, "test", bad_files="skip")
    if limit is not None:
        test = test.subset(np.arange(min(int(limit), len(test))))
    mean, std = pre.rgb_mean_std()
    test_ds = test.with_transform(eval_transform(pre.input_size, mean, std, crop_ratio=pre.crop_ratio))
    artifact = _ChannelReorder(model) if pre.channel_order == "BGR" else model
    _check_classes(artifact, list(test.classes), meta, pre.input_size, data_root)
    rows = []
    if reference is not None:
        ref_rt = _open(Path(reference), provider, pre.channel_order)
        if _model_hw(ref_rt) not in (None, (pre.input_size, pre.input_size)):
            raise ArtifactError(f"--reference {reference}: takes {_model_hw(ref_rt)} images, the model "
                                f"{pre.input_size}x{pre.input_size}; give a reference for the same input")
        _check_classes(ref_rt, list(test.classes), {}, pre.input_size, data_root)
        rows.append(Row("reference", "student", str(reference), ref_rt, ref_rt.name, "fp32"))
    rows.append(Row(onnx.name, "artifact", str(onnx), artifact, artifact.name,
                    str(meta.get("precision") or "fp32"), user_given=True))
    x, labels = eval_arrays(test_ds, pre.input_size, mean, std)
    log(f"validate: {onnx.name} on {len(labels)} test images of {data_root} ({len(test.classes)} classes), "
        f"preprocessing from {pre.source}")
    evaluate_clean(rows, x, labels, None, None, v.batch_size, v.confidence_threshold, log)
    del x
    corr_info = _corruption_suite(rows, test_ds, rec, {"mean": mean, "std": std}, quiet, log)
    for row in rows:
        _runtime_check(row, pre.input_size, log)
    gate_results = gates_mod.evaluate_gates([r.doc for r in rows], v.gates)
    code = gates_mod.exit_code(gate_results)
    out_dir = Path(out) if out is not None else default_out_dir(onnx)
    results = {
        "schema": SCHEMA, "run": str(onnx), "model": str(onnx), "reference": str(reference) if reference else None,
        "recipe_hash": None, "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "version": __version__, "clip_random": False, "preprocess": pre.to_dict(),
        "dataset": {"name": "imagefolder", "root": str(data_root), "classes": list(test.classes),
                    "test_samples": int(len(labels)), "calibration": NO_HOLDOUT, **corr_info},
        "rows": [r.doc for r in rows], "gates": gate_results, "exit_code": code,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", _jsonable(results))
    write_reports(results, out_dir)
    for line in gates_mod.summarize(gate_results).splitlines():
        log(line)
    log(f"validate: {'every gate holds' if code == 0 else 'a gate failed'}; report: {out_dir / 'report.html'}")
    return results
