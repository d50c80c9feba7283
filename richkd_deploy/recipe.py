"""Typed recipe schema, YAML loading, command-line overrides and validation.

A recipe is the single description of a job: it must be rejected early, with the
key path, the bad value and what is allowed, because a typo found after an hour of
training is an hour lost. The schema is plain frozen dataclasses so every other
module reads typed attributes instead of dict lookups; `_build` walks the field
types to coerce and check values, so adding a field is one line here.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from richkd_deploy.errors import RecipeError

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a blurry photo of a {}",
    "a cropped photo of a {}",
    "a close-up photo of a {}",
    "a low resolution photo of a {}",
    "a bright photo of a {}",
    "a picture of a {}",
    "a detailed image of a {}",
    "a sketch of a {}",
    "a natural photo of a {} in the wild",
    "a realistic image of a {}",
    "a high quality photo of a {}",
)

DISTILL_METHODS = ("vanilla", "kd", "crd", "richkd_l", "richkd_f", "richkd_lf")


class _PathStr(str):
    """Marker type: a string that is a file path, resolved relative to the recipe."""


PathStr = _PathStr


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["cifar10", "cifar100", "fashion-mnist", "imagefolder", "synthetic"] = "cifar100"
    root: PathStr | None = None
    download: bool = True
    input_size: int = 32
    train_limit: int | None = None
    test_limit: int | None = None
    holdout_fraction: float = 0.1
    num_workers: int = 2
    crop_padding: int = 4
    hflip: bool = True
    train_crop: Literal["pad", "random_resized"] = "pad"  # CIFAR's padded crop, or ImageNet's random resized crop
    crop_scale_min: float = 0.08  # random_resized: smallest crop area, as a fraction of the image
    eval_crop_ratio: float | None = None  # e.g. 0.875: resize to input_size/0.875, centre-crop; null: resize whole
    bad_files: Literal["error", "skip"] = "error"  # unreadable images in a folder: refuse before training, or skip
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    synthetic_fallback: bool = False  # smoke tests: use generated images when the dataset is absent


@dataclass(frozen=True)
class TeacherConfig:
    arch: str = "resnet32x4"
    checkpoint: str | None = None  # the finished teacher (file, URL or library tag), loaded strictly
    init: str | None = None  # weights to fine-tune the teacher from (its classifier replaced if needed)
    checkpoint_member: str | None = None
    sha256: str | None = None
    epochs: int | None = None
    # The frozen teacher's logits and features: computed once for every training image when
    # the training transform draws nothing (data.crop_padding 0, data.hflip false, train_crop
    # pad), else every step. auto: cached when that holds; cached: refuse otherwise; online.
    targets: Literal["auto", "cached", "online"] = "auto"
    lr: float | None = None


@dataclass(frozen=True)
class StudentConfig:
    arch: str = "resnet8x4"
    init: str | None = None  # starting weights (file, URL or library tag such as imagenet); null: random


@dataclass(frozen=True)
class ClipConfig:
    model: str = "ViT-L-14"
    pretrained: str = "openai"
    allow_random: bool = False
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    class_name_format: Literal["spaces", "raw"] = "spaces"
    logit_scale: Literal["learned"] | float = "learned"
    targets: Literal["cached", "online"] = "cached"
    batch_size: int = 128
    # Processes decoding and resizing images for the cache build (CLIP's own PIL
    # preprocessing per image); null: data.num_workers. The build runs alone, so it can
    # use workers where training on a small CPU cannot.
    num_workers: int | None = None


@dataclass(frozen=True)
class DistillConfig:
    method: Literal["vanilla", "kd", "crd", "richkd_l", "richkd_f", "richkd_lf"] = "richkd_lf"
    temperature: float = 3.0
    w_ce: float = 1.0
    w_logit: float = 3.0
    w_feat: float = 0.8
    alpha: float = 0.7
    lam: float = 0.7
    feat_dim: int = 128
    nce_k: int = 16384
    nce_t: float = 0.07
    nce_momentum: float = 0.5
    crd_negatives: Literal["other_class", "uniform"] = "other_class"  # as published; uniform: any image


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # "step": the lr is multiplied by gamma at each milestone epoch (the CIFAR KD papers'
    # schedule, shared by the teacher and the student stage). "cosine": set per batch, a
    # linear warm-up over warmup_epochs, then a cosine decay to 0 at the stage's last step
    # (each stage over its own epochs; milestones and gamma unused): short runs end
    # better annealed than with a few steps.
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[int, ...] = (150, 180, 210)
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # cosine only; may be a fraction of an epoch
    amp: bool = True
    lr_scaling: Literal["none", "linear"] = "none"
    sync_bn: bool = False
    channels_last: bool = False
    compile: bool = False
    # Which epoch student.pt holds: "best" by top-1 on the holdout split (never the test
    # set), "last", or "auto" (best when data.holdout_fraction > 0, else last).
    select: Literal["auto", "best", "last"] = "auto"


@dataclass(frozen=True)
class TrtConfig:
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 64
    workspace_mb: int = 1024


@dataclass(frozen=True)
class Int8Config:
    """`export.int8`: how model.int8.onnx is calibrated and, when it fails the INT8 gates
    (validate.gates max_top1_drop / min_agreement) on the holdout split, repaired."""

    method: Literal["minmax", "entropy", "percentile"] = "minmax"  # onnxruntime's calibrators
    per_channel: bool = True
    symmetric_activations: bool = True  # false: non-zero zero points, which TensorRT rejects
    # tensorrt: symmetric int8 Q/DQ everywhere (TensorRT's explicit quantization); cpu: each Relu
    # after an int8 kernel folded into a uint8 Q (onnxruntime CPU runs it ~1.5x faster; TensorRT
    # rejects it); auto: tensorrt when the export builds engines (--trt), else cpu
    layout: Literal["auto", "tensorrt", "cpu"] = "auto"
    calibration_images: int | None = None  # null: export.calibration_images
    search: bool = False  # try every method on the holdout, keep the fastest that passes
    fallback: bool = True  # keep the most sensitive layers in float until the gates hold
    max_float_layers: int = 4
    sensitivity: bool = False  # always record the per-layer sensitivity table (else only on a failure)
    # corrupted copies of the calibration images added to the calibration set, "name:severity"
    # (validate's corruption names, e.g. "gaussian_noise:3"), so the ranges cover what validate feeds
    calibration_corruptions: tuple[str, ...] = ()
    # teacher-driven QAT before quantizing: fine-tune the student with fake quantization under
    # the run's own distillation target for this many epochs (0 = off; `export --qat` turns it on)
    qat_epochs: int = 0

    def resolved_layout(self, trt: bool) -> str:
        """The layout written: `auto` means tensorrt when engines are built from the file."""
        return self.layout if self.layout != "auto" else ("tensorrt" if trt else "cpu")

    def images(self, export_default: int) -> int:
        """The calibration set size: this section's, else the older `export.calibration_images`."""
        return self.calibration_images if self.calibration_images is not None else export_default


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    precisions: tuple[Literal["fp32", "fp16", "int8"], ...] = ("fp32", "fp16", "int8")
    calibration_images: int = 512  # export.int8.calibration_images, when set, takes precedence
    int8: Int8Config = field(default_factory=Int8Config)
    parity_atol: float = 1e-4
    parity_min_agreement: float = 1.0
    parity_images: int = 256
    trt: TrtConfig = field(default_factory=TrtConfig)


@dataclass(frozen=True)
class CorruptionConfig:
    names: tuple[str, ...] | None = None
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    samples: int = 1000
    source: PathStr | None = None
    seed: int = 0


@dataclass(frozen=True)
class GatesConfig:
    max_top1_drop: float | None = 0.01
    min_agreement: float | None = 0.97
    max_ece: float | None = None
    max_ece_increase: float | None = 0.02
    min_corruption_accuracy: float | None = None
    max_corruption_drop: float | None = 0.03
    max_class_top1_drop: float | None = 0.05


# The one table of gate names: GatesConfig's fields. evaluate.gates describes each of them.
GATE_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GatesConfig))


@dataclass(frozen=True)
class ValidateConfig:
    batch_size: int = 256
    test_limit: int | None = None
    confidence_threshold: float = 0.9
    calibration_split: Literal["holdout"] = "holdout"
    corruptions: CorruptionConfig = field(default_factory=CorruptionConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    allow_random_clip: bool = False  # a student distilled from random CLIP weights may pass validate


@dataclass(frozen=True)
class Recipe:
    name: str = "run"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    source: str | None = None  # the recipe file, filled in by load()

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-safe dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """sha256 of the resolved recipe minus its file location: two runs with the same
        settings have the same hash wherever the recipe file lives."""
        d = self.to_dict()
        d.pop("source", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @property
    def needs_teacher(self) -> bool:
        return self.distill.method != "vanilla"

    @property
    def needs_clip(self) -> bool:
        return self.distill.method.startswith("richkd")


# Range checks that a type alone cannot express: key path -> (predicate, what is allowed).
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.input_size": (lambda v: 8 <= v <= 4096, "an integer from 8 to 4096"),
    "data.train_limit": (lambda v: v is None or v >= 1, "null or a positive integer"),
    "data.test_limit": (lambda v: v is None or v >= 1, "null or a positive integer"),
    "data.holdout_fraction": (lambda v: 0.0 <= v < 0.9, "a fraction in [0, 0.9)"),
    "data.num_workers": (lambda v: 0 <= v <= 64, "an integer from 0 to 64"),
    "data.crop_padding": (lambda v: 0 <= v <= 64, "an integer from 0 to 64"),
    "data.crop_scale_min": (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    "data.eval_crop_ratio": (lambda v: v is None or 0.25 <= v <= 1, "null or a fraction in [0.25, 1]"),
    "teacher.epochs": (lambda v: v is None or 1 <= v <= 10000, "null or 1..10000"),
    "teacher.lr": (lambda v: v is None or 0 < v <= 10, "null or a number in (0, 10]"),
    "clip.batch_size": (lambda v: 1 <= v <= 65536, "1..65536"),
    "clip.num_workers": (lambda v: v is None or 0 <= v <= 256, "null or 0..256"),
    "clip.logit_scale": (lambda v: v == "learned" or 0 < v <= 1000, "'learned' or a number in (0, 1000]"),
    "clip.templates": (lambda v: len(v) >= 1 and all("{}" in t for t in v), "a non-empty list of strings each containing '{}'"),
    "distill.temperature": (lambda v: 0 < v <= 100, "a number in (0, 100]"),
    "distill.w_ce": (lambda v: 0 <= v <= 1000, "a number in [0, 1000]"),
    "distill.w_logit": (lambda v: 0 <= v <= 1000, "a number in [0, 1000]"),
    "distill.w_feat": (lambda v: 0 <= v <= 1000, "a number in [0, 1000]"),
    "distill.alpha": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "distill.lam": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "distill.feat_dim": (lambda v: 1 <= v <= 8192, "1..8192"),
    "distill.nce_k": (lambda v: 1 <= v <= 10_000_000, "1..10000000"),
    "distill.nce_t": (lambda v: 0 < v <= 10, "a number in (0, 10]"),
    "distill.nce_momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.epochs": (lambda v: 1 <= v <= 10000, "1..10000"),
    "optim.batch_size": (lambda v: 1 <= v <= 65536, "1..65536"),
    "optim.lr": (lambda v: 0 < v <= 10, "a number in (0, 10]"),
    "optim.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.weight_decay": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "optim.milestones": (lambda v: all(m >= 1 for m in v) and list(v) == sorted(v), "increasing positive epochs"),
    "optim.gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "optim.warmup_epochs": (lambda v: 0 <= v <= 10000, "a number of epochs in [0, 10000]"),
    "export.opset": (lambda v: 13 <= v <= 23, "an ONNX opset from 13 to 23"),
    "export.precisions": (lambda v: len(v) >= 1 and "fp32" in v, "a list that includes fp32 (the others derive from it)"),
    "export.calibration_images": (lambda v: 1 <= v <= 100000, "1..100000"),
    "export.int8.calibration_images": (lambda v: v is None or 1 <= v <= 100000, "null or 1..100000"),
    "export.int8.calibration_corruptions": (
        lambda v: all(e.count(":") == 1 and e.split(":")[0] and e.split(":")[1] in ("1", "2", "3", "4", "5") for e in v),
        "a list of 'name:severity' strings, severity 1..5 (e.g. 'gaussian_noise:3')"),
    "export.int8.max_float_layers": (lambda v: 0 <= v <= 1000, "0..1000"),
    "export.int8.qat_epochs": (lambda v: 0 <= v <= 1000, "0..1000 (0 = no QAT)"),
    "export.parity_atol": (lambda v: 0 < v <= 10, "a number in (0, 10]"),
    "export.parity_min_agreement": (lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    "export.parity_images": (lambda v: 1 <= v <= 100000, "1..100000"),
    "export.trt.min_batch": (lambda v: 1 <= v <= 65536, "1..65536"),
    "export.trt.opt_batch": (lambda v: 1 <= v <= 65536, "1..65536"),
    "export.trt.max_batch": (lambda v: 1 <= v <= 65536, "1..65536"),
    "export.trt.workspace_mb": (lambda v: 16 <= v <= 1_000_000, "16..1000000 MiB"),
    "validate.batch_size": (lambda v: 1 <= v <= 65536, "1..65536"),
    "validate.test_limit": (lambda v: v is None or v >= 1, "null or a positive integer"),
    "validate.confidence_threshold": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "validate.corruptions.severities": (lambda v: len(v) >= 1 and all(1 <= s <= 5 for s in v), "a non-empty list of severities 1..5"),
    "validate.corruptions.samples": (lambda v: 1 <= v <= 10_000_000, "a positive integer"),
    "name": (lambda v: 1 <= len(v) <= 100 and all(c.isalnum() or c in "-_." for c in v) and not v.startswith("."),
             "1-100 characters of letters, digits, '-', '_' or '.' (it names the run folder)"),
}
for _gate in GATE_NAMES:
    _RANGES[f"validate.gates.{_gate}"] = (lambda v: v is None or 0 <= v <= 1, "null or a fraction in [0, 1]")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, _PathStr):
        return str(obj)
    return obj


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(get_args(tp)[0])}"
    if tp is _PathStr:
        return "a file path"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(tp: Any, value: Any, path: str, base_dir: Path) -> Any:
    """Check `value` against type `tp`, converting where YAML is looser (int -> float,
    list -> tuple). Raises RecipeError naming the key path."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(arg, value, path, base_dir)
            except RecipeError as exc:
                errors.append(exc)
        raise RecipeError(f"{path}: got {_short(value)}, expected {_describe(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise RecipeError(f"{path}: got {_short(value)}, expected null")
    if origin is Literal:
        if value in get_args(tp) and not isinstance(value, bool):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"{path}: got {_short(value)}, expected {_describe(tp)}{hint}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{path}: got {_short(value)}, expected {_describe(tp)}")
        inner = get_args(tp)[0]
        return tuple(_coerce(inner, v, f"{path}[{i}]", base_dir) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: got {_short(value)}, expected a mapping of {tp.__name__} keys")
        return _build(tp, value, path, base_dir)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise RecipeError(f"{path}: got {_short(value)}, expected a finite number")
            return float(value)
    elif tp is _PathStr:
        if isinstance(value, str) and value and "\x00" not in value:
            p = Path(value).expanduser()
            return _PathStr(p if p.is_absolute() else (base_dir / p).resolve())
    elif tp is str:
        if isinstance(value, str) and "\x00" not in value:
            return value
    raise RecipeError(f"{path}: got {_short(value)}, expected {_describe(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str, base_dir: Path) -> Any:
    hints = typing.get_type_hints(cls, globalns={**globals(), "PathStr": _PathStr})
    names = [f.name for f in dataclasses.fields(cls) if not (cls is Recipe and f.name == "source")]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise RecipeError(f"{path}: unknown key; {hint}allowed here: {', '.join(names)}")
        coerced = _coerce(hints[key], value, path, base_dir)
        check = _RANGES.get(path)
        if check is not None and not check[0](coerced):
            raise RecipeError(f"{path}: got {_short(value)}, expected {check[1]}")
        kwargs[key] = coerced
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. -o optim.epochs=1")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an integer of more than 4300 digits
        value = raw
    return parts, value


def _apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"override {'.'.join(parts)}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _cross_checks(recipe: Recipe, check_files: bool = True) -> None:
    """Rules that involve more than one key. `check_files=False` skips the checks that
    input files still exist (a finished run's recipe, read back by export/validate).
    Architecture names are checked where models are built (`models.for_recipe`), so
    this module imports nothing above it."""
    if recipe.needs_clip and recipe.clip.pretrained.lower() == "none" and not recipe.clip.allow_random:
        raise RecipeError(
            "clip.pretrained: 'none' means random CLIP weights, which teach nothing; "
            "set clip.allow_random: true to run anyway (for tests), or give a hub tag or a local checkpoint")
    if recipe.optim.select == "best" and recipe.data.holdout_fraction == 0:
        raise RecipeError("optim.select: best picks the epoch by holdout top-1, and data.holdout_fraction is 0; "
                          "set data.holdout_fraction > 0 or optim.select: last")
    t = recipe.export.trt
    if not t.min_batch <= t.opt_batch <= t.max_batch:
        raise RecipeError(f"export.trt: need min_batch <= opt_batch <= max_batch, got {t.min_batch}, {t.opt_batch}, {t.max_batch}")
    for key in ("mean", "std"):
        v = getattr(recipe.data, key)
        if v is not None and len(v) not in (1, 3):
            raise RecipeError(f"data.{key}: expected 1 or 3 numbers, got {len(v)}")
    if recipe.data.std is not None and any(s <= 0 for s in recipe.data.std):
        raise RecipeError("data.std: every value must be positive")
    if recipe.data.dataset == "imagefolder" and recipe.data.root is None:
        raise RecipeError("data.root: imagefolder needs a folder with train/ and test/ subfolders")
    if recipe.teacher.checkpoint and recipe.teacher.init:
        raise RecipeError("teacher: set either checkpoint (a finished teacher) or init (weights to fine-tune it "
                          "from), not both")
    q = recipe.export.int8
    if q.search and recipe.data.holdout_fraction <= 0:
        raise RecipeError("export.int8.search: the method search is judged on the holdout split (never the test "
                          "set); set data.holdout_fraction > 0 (e.g. 0.1) or search: false")
    if not check_files:
        return
    if recipe.data.root is not None and not Path(recipe.data.root).exists() and recipe.data.dataset != "cifar10" \
            and recipe.data.dataset != "cifar100":
        raise RecipeError(f"data.root: {recipe.data.root} does not exist")
    for key, spec in (("teacher.checkpoint", recipe.teacher.checkpoint), ("teacher.init", recipe.teacher.init),
                      ("student.init", recipe.student.init)):
        if spec and not spec.lower().startswith(("http://", "https://")) and Path(spec).is_absolute() \
                and not Path(spec).is_file():  # file specs are absolute by now; tags and URLs are checked later
            raise RecipeError(f"{key}: {spec} is not a file; give a weights file, an http(s) URL or a library tag")


def _weights_path(spec: str, base: Path) -> bool:
    """A weights spec that names a file (resolved relative to the recipe), not a URL or a
    library tag such as `imagenet`; the same rule as `models.pretrained.is_path`."""
    if spec.lower().startswith(("http://", "https://")):
        return False
    return ("/" in spec or spec.startswith((".", "~")) or (base / spec).exists()
            or spec.lower().endswith((".pth", ".pt", ".safetensors", ".bin", ".ckpt", ".tar")))


_MAX_DEPTH = 32
_MAX_NODES = 100_000


def _check_size(data: Any) -> None:
    """Refuse structures no recipe has before copying them: YAML aliases can make a
    small file expand to billions of nodes, or refer to themselves."""
    stack, nodes = [(data, 0)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > _MAX_DEPTH:
            raise RecipeError(f"recipe: nested more than {_MAX_DEPTH} levels deep (or a YAML alias that refers to "
                              "itself); a recipe is a few flat sections")
        if nodes > _MAX_NODES:
            raise RecipeError(f"recipe: more than {_MAX_NODES} values (YAML aliases expanding?); "
                              "a recipe is a few flat sections")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)


def from_dict(data: dict[str, Any], base_dir: Path | str = ".", source: str | None = None,
              overrides: typing.Sequence[str] = (), check_files: bool = True) -> Recipe:
    """Build a Recipe from a parsed mapping; `base_dir` anchors relative paths."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe: expected a mapping of sections at the top level, got {type(data).__name__}")
    _check_size(data)
    data = json.loads(json.dumps(data, default=str))  # deep copy, normalises YAML dates etc.
    for text in overrides:
        parts, value = _parse_override(text)
        _apply_override(data, parts, value)
    base = Path(base_dir).resolve()
    for section, key in (("teacher", "checkpoint"), ("teacher", "init"), ("student", "init")):
        ckpt = (data.get(section) or {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(ckpt, str) and ckpt and _weights_path(ckpt, base):  # a library tag stays as it is
            p = Path(ckpt).expanduser()
            data[section][key] = str(p if p.is_absolute() else (base / p).resolve())
    data.pop("source", None)  # a saved recipe.yaml records where it came from; not a setting
    pretrained = (data.get("clip") or {}).get("pretrained") if isinstance(data.get("clip"), dict) else None
    if isinstance(pretrained, str) and ("/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        p = Path(pretrained).expanduser()  # a local CLIP checkpoint, not a hub tag
        data["clip"]["pretrained"] = str(p if p.is_absolute() else (base / p).resolve())
    recipe = _build(Recipe, data, "", base)
    recipe = dataclasses.replace(recipe, source=source)
    _cross_checks(recipe, check_files)
    return recipe


def load(path: str | Path, overrides: typing.Sequence[str] = (), base_dir: str | Path | None = None,
         check_files: bool = True) -> Recipe:
    """Load a recipe file, apply `-o key=value` overrides, and validate everything.
    Relative paths resolve against `base_dir`, by default the file's folder;
    `check_files=False` skips the checks that named files and folders exist."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {p}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"recipe {p}: not valid YAML ({first})") from None
    except RecursionError:
        raise RecipeError(f"recipe {p}: nested too deeply to be a recipe") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"recipe {p}: a value cannot be read ({first})") from None
    except OSError as exc:
        raise RecipeError(f"recipe {p}: cannot read it ({exc.strerror})") from None
    return from_dict(data, base_dir=p.resolve().parent if base_dir is None else base_dir, source=str(p.resolve()),
                     overrides=overrides, check_files=check_files)
