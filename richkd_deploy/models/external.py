"""torchvision and timm architectures behind the zoo's `(logits, features)` contract.

Users ship 224-px ImageNet-class networks fine-tuned from library weights, so a
recipe names them as `torchvision/<name>` or `timm/<name>` (the library's own
name). Each library model is wrapped, never edited: the wrapper keeps the library
module under `.model` (so its own weight files load into it unchanged) and reads
the pooled penultimate features through the library's API -- timm's
`forward_features` + `forward_head(pre_logits=True)`, torchvision's classifier
input captured by a forward pre-hook (the same tensor a classifier replaced by
Identity would return). `export_module()` hands the exporter the library module
itself, whose forward already returns the logits only.

timm is imported only when a `timm/` name is used, so `import richkd_deploy` and
`--help` stay light.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd_deploy.errors import MissingDependencyError, RecipeError
from richkd_deploy.models.base import ModelOutput

FAMILIES = ("torchvision", "timm")
TORCHVISION_INPUT_SIZE = 224  # torchvision's classification weights are evaluated at 224 unless they say otherwise

# torchvision classifiers whose head is not one final Linear, or that return auxiliary
# outputs in training; not offered rather than half-supported.
_TORCHVISION_UNSUPPORTED = {
    "googlenet": "it returns auxiliary logits in training",
    "inception_v3": "it returns auxiliary logits in training",
    "squeezenet1_0": "its classifier is a convolution, not a linear layer",
    "squeezenet1_1": "its classifier is a convolution, not a linear layer",
}
# Where torchvision keeps the final Linear, in the order tried.
_TORCHVISION_HEADS = ("fc", "heads.head", "head", "classifier")


def split_name(name: str) -> tuple[str, str] | None:
    """`'timm/resnet10t'` -> `('timm', 'resnet10t')`; None for a zoo name."""
    family, sep, arch = name.strip().partition("/")
    if not sep:
        return None
    family = family.lower()
    if family not in FAMILIES:
        raise RecipeError(f"unknown model family {family!r} in {name!r}: use torchvision/<name> or timm/<name>, "
                          "or a zoo name (see richkd-deploy models)")
    return family, arch.strip()


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise MissingDependencyError("timm/ architectures need timm: pip install timm") from None
    return timm


# ---------------------------------------------------------------- names and metadata


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(n for n in torchvision.models.list_models(module=torchvision.models)
                 if n not in _TORCHVISION_UNSUPPORTED)


@functools.cache
def timm_names() -> tuple[str, ...]:
    return tuple(_timm().list_models())


def family_names(family: str) -> tuple[str, ...]:
    return torchvision_names() if family == "torchvision" else timm_names()


def resolve(name: str) -> str:
    """Canonical `family/arch`, or a RecipeError with close matches from that library."""
    import difflib

    family, arch = split_name(name)  # type: ignore[misc]
    names = family_names(family)
    if arch in names:
        return f"{family}/{arch}"
    lowered = {n.lower(): n for n in names}
    if arch.lower() in lowered:
        return f"{family}/{lowered[arch.lower()]}"
    if family == "torchvision" and arch in _TORCHVISION_UNSUPPORTED:
        raise RecipeError(f"torchvision/{arch} is not supported: {_TORCHVISION_UNSUPPORTED[arch]}")
    close = difflib.get_close_matches(arch.lower(), list(lowered), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(f'{family}/{lowered[c]}' for c in close)}? " if close else ""
    raise RecipeError(f"unknown model {name!r}: {hint}see richkd-deploy models '{family}/*'")


@dataclass(frozen=True)
class ExternalInfo:
    """What `richkd-deploy models` shows, found without building the model where the
    library says it (torchvision's weight metadata, timm's pretrained_cfg)."""

    name: str
    input_size: int
    params: int | None  # None: not known without building the model


def _torchvision_default_weights(arch: str) -> Any | None:
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def torchvision_input_size(arch: str) -> int:
    """The crop size the default weights were evaluated at (224 for most, 380 for
    efficientnet_b4, ...), read from the weights' transform; 224 when there is none."""
    weights = _torchvision_default_weights(arch)
    crop = getattr(getattr(weights, "transforms", None), "keywords", {}).get("crop_size") if weights else None
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop) if crop else TORCHVISION_INPUT_SIZE


def timm_input_size(arch: str) -> int:
    cfg = _timm().get_pretrained_cfg(arch)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else TORCHVISION_INPUT_SIZE


def info(canonical: str) -> ExternalInfo:
    family, arch = canonical.split("/", 1)
    if family == "torchvision":
        weights = _torchvision_default_weights(arch)
        params = weights.meta.get("num_params") if weights is not None else None
        return ExternalInfo(canonical, torchvision_input_size(arch), params)
    return ExternalInfo(canonical, timm_input_size(arch), None)


def count_params_meta(canonical: str) -> int:
    """Parameter count of the library model (its own class count) built on the meta
    device: no memory and no weight init, but still ~0.1-0.3 s a model for timm."""
    family, arch = canonical.split("/", 1)
    with torch.device("meta"):
        if family == "torchvision":
            import torchvision

            model = torchvision.models.get_model(arch)
        else:
            model = _timm().create_model(arch, pretrained=False)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- wrappers


class LibraryClassifier(nn.Module):
    """A library model under `.model`, answering `(logits, pooled features)`.

    Attributes the rest of the package reads: `num_classes`, `num_features` (the
    width of the features = the classifier's input), `default_input_size`, `family`.
    """

    family: str

    def __init__(self, model: nn.Module, num_classes: int, input_size: int) -> None:
        super().__init__()
        self.model = model
        head = self.get_classifier()
        self.num_classes = num_classes
        self.num_features = int(head.in_features)
        self.default_input_size = input_size

    def get_classifier(self) -> nn.Linear:
        raise NotImplementedError

    def classifier_path(self) -> str:
        """Name of the final Linear inside `.model` (the library's state-dict prefix)."""
        head = self.get_classifier()
        return next(name for name, m in self.model.named_modules() if m is head)

    def export_module(self) -> nn.Module:
        """The library module: its forward returns the logits only, as exported."""
        return self.model


class TorchvisionClassifier(LibraryClassifier):
    family = "torchvision"

    def __init__(self, arch: str, num_classes: int) -> None:
        import torchvision

        model = torchvision.models.get_model(arch)
        self._head_path = _torchvision_head_path(model, arch)
        old = model.get_submodule(self._head_path)
        if old.out_features != num_classes:
            _set_submodule(model, self._head_path, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
        super().__init__(model, num_classes, torchvision_input_size(arch))
        self._captured: list[Tensor] = []
        self._capturing = False
        self.get_classifier().register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        # only while our forward runs: the export view (the library module alone) keeps nothing
        if self._capturing:
            self._captured.append(args[0])

    def get_classifier(self) -> nn.Linear:
        return self.model.get_submodule(self._head_path)  # type: ignore[return-value]

    def forward(self, x: Tensor) -> ModelOutput:
        self._captured.clear()
        self._capturing = True
        try:
            logits = self.model(x)
        finally:
            self._capturing = False
        features = self._captured.pop()
        return ModelOutput(logits, torch.flatten(features, 1))


def _torchvision_head_path(model: nn.Module, arch: str) -> str:
    for path in _TORCHVISION_HEADS:
        try:
            head = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(head, nn.Sequential):
            idx = max((i for i, m in enumerate(head) if isinstance(m, nn.Linear)), default=None)
            if idx is not None and idx == len(head) - 1:
                return f"{path}.{idx}"
        elif isinstance(head, nn.Linear):
            return path
    raise RecipeError(f"torchvision/{arch}: no final linear classifier at fc, classifier[-1] or heads.head; "
                      "this architecture is not supported")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


class TimmClassifier(LibraryClassifier):
    family = "timm"

    def __init__(self, arch: str, num_classes: int, model: nn.Module | None = None) -> None:
        timm = _timm()
        model = model if model is not None else timm.create_model(arch, pretrained=False)
        if not isinstance(model.get_classifier(), nn.Linear):
            raise RecipeError(f"timm/{arch}: its classifier is {type(model.get_classifier()).__name__}, "
                              "not one linear layer; this architecture is not supported")
        if model.get_classifier().out_features != num_classes:
            model.reset_classifier(num_classes)
        super().__init__(model, num_classes, timm_input_size(arch))

    def get_classifier(self) -> nn.Linear:
        return self.model.get_classifier()

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        # what timm's own forward_head applies between pre-logits and the classifier
        dropped = F.dropout(features, p=float(getattr(self.model, "drop_rate", 0.0) or 0.0), training=self.training)
        return ModelOutput(self.get_classifier()(dropped), features)


_BUILDERS: dict[str, Callable[[str, int], LibraryClassifier]] = {
    "torchvision": TorchvisionClassifier,
    "timm": TimmClassifier,
}


def create(canonical: str, num_classes: int) -> LibraryClassifier:
    """Build `family/arch` with random weights and a `num_classes` classifier."""
    family, arch = canonical.split("/", 1)
    return _BUILDERS[family](arch, num_classes)
