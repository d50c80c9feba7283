"""Name -> builder registry for the model zoo (timm-style).

Recipes name architectures as strings; one registry keeps the valid names, their
aliases and the error for a typo in one place, and lets tests parametrize over
`list_models()` so a newly registered model is checked automatically.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from richkd_deploy.errors import RecipeError
from richkd_deploy.models import external

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Builder
    aliases: tuple[str, ...]


_ENTRIES: dict[str, _Entry] = {}  # canonical name -> entry, in registration order
_LOOKUP: dict[str, str] = {}  # normalised name or alias -> canonical name


def _normalise(name: str) -> str:
    """Case and `-`/`_` are not significant: `WRN-40-2` finds `wrn_40_2`."""
    return name.strip().lower().replace("-", "_")


def register_model(name: str | None = None, aliases: Iterable[str] = ()) -> Callable[[B], B]:
    """Decorator filing a builder under `name` (default: its function name).

    A clash between two names is a programming error, so it raises ValueError at
    import time rather than letting the later registration silently win.
    """

    def deco(builder: B) -> B:
        canonical = name or builder.__name__
        entry = _Entry(canonical, builder, tuple(aliases))
        keys = [_normalise(k) for k in (canonical, *entry.aliases)]
        for key, norm in zip((canonical, *entry.aliases), keys, strict=True):
            if norm in _LOOKUP:  # checked for all names before any is filed
                raise ValueError(f"model name {key!r} is already registered for {_LOOKUP[norm]!r}")
        _LOOKUP.update(dict.fromkeys(keys, canonical))
        _ENTRIES[canonical] = entry
        return builder

    return deco


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort `resnet8 < resnet14 < resnet110`, ignoring case, whatever the import order."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name.lower()) if t]


def list_models(pattern: str | None = None) -> list[str]:
    """Canonical names of our zoo in natural order, optionally filtered by an fnmatch
    pattern (case-insensitive; a pattern matching an alias selects its model).
    The torchvision/timm families are listed by `list_all_models`."""
    entries = sorted(_ENTRIES.values(), key=lambda e: _natural_key(e.name))
    if pattern is None:
        return [e.name for e in entries]
    pat = _normalise(pattern)
    return [e.name for e in entries if any(fnmatch.fnmatchcase(_normalise(n), pat) for n in (e.name, *e.aliases))]


def resolve_name(name: str) -> str:
    """Map a name or alias to its canonical name, or raise RecipeError with suggestions.

    `torchvision/<name>` and `timm/<name>` are the libraries' own names, resolved
    by `external` (their case and spelling are the library's, so not normalised here).
    """
    if isinstance(name, str) and external.split_name(name) is not None:
        return external.resolve(name)
    if not isinstance(name, str) or _normalise(name) not in _LOOKUP:
        choices = list(_LOOKUP)
        close = difflib.get_close_matches(_normalise(str(name)), choices, n=3, cutoff=0.6)
        close_names = list(dict.fromkeys(_LOOKUP[c] for c in close))
        hint = f"did you mean {', '.join(close_names)}? " if close_names else ""
        raise RecipeError(
            f"unknown model {name!r}: {hint}valid names are {', '.join(list_models())} "
            "(see richkd_deploy.models.list_models())"
        )
    return _LOOKUP[_normalise(name)]


def create_model(name: str, num_classes: int = 100, **kwargs: Any) -> nn.Module:
    """Build a registered model with fresh weights.

    Option names are checked against the builder's signature first, so a typo in a
    recipe is a RecipeError naming the accepted options instead of a TypeError from
    deep inside a constructor. The model gets an `arch` attribute (its canonical
    name) so later messages, e.g. a checkpoint mismatch, can name it.
    """
    canonical = resolve_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise RecipeError(f"num_classes for model {canonical} must be a positive integer, got {num_classes!r}")
    if "/" in canonical:
        if any(v is not None for v in kwargs.values()):
            raise RecipeError(f"model {canonical} takes no options besides num_classes")
        model = external.create(canonical, num_classes)
        model.arch = canonical
        return model
    builder = _ENTRIES[canonical].builder
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        inspect.signature(builder).bind(num_classes=num_classes, **kwargs)
    except TypeError:
        accepted = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
        raise RecipeError(
            f"model {canonical} does not take option(s) {', '.join(sorted(kwargs))}; "
            f"it accepts: {', '.join(accepted) or 'only num_classes'}"
        ) from None
    model = builder(num_classes=num_classes, **kwargs)
    model.arch = canonical
    return model


def list_all_models(pattern: str | None = None) -> list[str]:
    """Zoo names, then `torchvision/<name>`, then `timm/<name>`, each matching
    `pattern` (fnmatch, case-insensitive). A pattern without a `/` is matched
    against the bare library names too, so `resnet18` finds `torchvision/resnet18`."""
    names = list_models(pattern)
    pat = None if pattern is None else pattern.strip().lower()
    for family in external.FAMILIES:
        if pat is not None and "/" in pat and not fnmatch.fnmatchcase(family, pat.split("/", 1)[0]):
            continue
        for arch in external.family_names(family):
            full = f"{family}/{arch}"
            if pat is None or fnmatch.fnmatchcase(full.lower(), pat) or (
                    "/" not in pat and fnmatch.fnmatchcase(arch.lower(), pat)):
                names.append(full)
    return names
