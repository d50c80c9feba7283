"""Reading and writing checkpoints without surprises (fetching them: `models.fetch`).

Three failure modes in research KD code motivate this module: teachers loaded with
`strict=False` (silently half-random), `torch.load` of untrusted pickles (runs
code), and checkpoints written in place (a crash or full disk leaves a truncated
file under the good name). Every user-fixable problem here is a `CheckpointError`
with a one-line message that says what to do.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from richkd_deploy.errors import CheckpointError, RunError
from richkd_deploy.runs import atomic_write

# How many key names a mismatch message shows before "...".
_SHOW = 3
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


# ---------------------------------------------------------------- strict loading


def _extract_state_dict(obj: Any, source: str) -> Mapping[str, Any]:
    """Find the state dict in the shapes checkpoints come in: raw, or under 'model' /
    'state_dict' (RepDistiller saves {'epoch', 'model', 'accuracy', 'optimizer'})."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {source} holds a {type(obj).__name__}, not a state dict")
    for key in ("model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    keys = ", ".join(map(str, list(obj)[:8]))
    raise CheckpointError(
        f"checkpoint {source} holds no state dict (expected tensors, or one under 'model' or "
        f"'state_dict'; found keys: {keys or 'none'})"
    )


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (", ..." if len(keys) > _SHOW else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _classifier_weight_key(model: nn.Module) -> str | None:
    """State-dict key of the final linear weight (`fc`, `linear`, `classifier.0`, ...)."""
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    head = get()
    return next((f"{name}.weight" for name, m in model.named_modules() if m is head), None)


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    source: str,
    hint: str = "check teacher.arch / data.dataset",
) -> nn.Module:
    """Load weights so that every parameter is accounted for, or say exactly why not.

    Tolerated, because they carry no information: a `module.`/`_orig_mod.` prefix
    and a missing BatchNorm `num_batches_tracked` (old checkpoints). Anything else --
    a missing or unexpected key, a shape mismatch such as another class count --
    raises CheckpointError naming the first offenders, since a silently half-loaded
    teacher wastes a whole distillation run. Returns `model` for chaining.
    """
    raw = _extract_state_dict(state_dict, source)
    given: dict[str, Any] = {}
    for key, value in raw.items():
        given[_strip_prefixes(str(key))] = value
    expected = model.state_dict()

    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in given:
            given[key] = torch.zeros_like(value)

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    problems = []
    if missing:
        problems.append(f"{_plural(len(missing), 'missing key')} ({_names(missing)})")
    if unexpected:
        problems.append(f"{_plural(len(unexpected), 'unexpected key')} ({_names(unexpected)})")
    not_tensors = [k for k in expected if k in given and not isinstance(given[k], Tensor)]
    if not_tensors:
        problems.append(f"{_plural(len(not_tensors), 'entry')} not a tensor ({_names(not_tensors)})")
    mismatched = [
        k for k in expected if k in given and isinstance(given[k], Tensor) and given[k].shape != expected[k].shape
    ]
    for k in mismatched[:_SHOW]:
        problems.append(f"{k} has shape {list(given[k].shape)} but the model expects {list(expected[k].shape)}")
    if len(mismatched) > _SHOW:
        problems.append(f"{len(mismatched) - _SHOW} more shape mismatches")
    head = _classifier_weight_key(model)
    if head in mismatched and given[head].ndim == 2 and given[head].shape[1:] == expected[head].shape[1:]:
        problems.append(f"the checkpoint was trained for {given[head].shape[0]} classes")

    if problems:
        arch = getattr(model, "arch", type(model).__name__)
        classes = getattr(model, "num_classes", None)
        what = f"{arch} with {classes} classes" if classes is not None else str(arch)
        raise CheckpointError(f"checkpoint {source} does not fit {what}: {', '.join(problems)}; {hint}")
    try:
        model.load_state_dict(given, strict=True)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied; keep it one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {source} could not be loaded into the model: {first}") from e
    return model


# ---------------------------------------------------------------- load / save


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`, so a malicious pickle cannot run code.

    Torch reports a refused or corrupt file with a multi-line RuntimeError or
    UnpicklingError; here it becomes one CheckpointError line saying which case it is.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} not found; check the path")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _first_line(e)
        # random bytes also fail in the weights-only unpickler ("Unsupported operand"): that is a
        # damaged file, not one that carries code
        if "weights only load failed" in str(e).lower() and "unsupported operand" not in str(e).lower():
            raise CheckpointError(
                f"checkpoint {p} was refused: it contains Python objects that torch.load(weights_only=True) "
                f"will not unpickle because loading them could run code ({_refusal_detail(e)}). Only load "
                "checkpoints you trust; re-save the trusted one as a plain dict of tensors"
            ) from None
        raise CheckpointError(f"checkpoint {p} is corrupt or not a PyTorch file ({reason})") from e
    except Exception as e:  # noqa: BLE001 -- parsing damaged bytes can fail with any error type
        raise CheckpointError(
            f"checkpoint {p} is truncated, corrupt or not a PyTorch file "
            f"({type(e).__name__}: {_first_line(e)}); download or copy it again"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(obj).__name__}, expected a dict")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _refusal_detail(e: BaseException) -> str:
    """Name the refused global (e.g. `posix.system`) from torch's long message, whose
    wording differs between torch versions; its allowlisting advice is left out on purpose."""
    match = re.search(r"GLOBAL ([\w.]+)", str(e))
    return f"it refers to {match.group(1)}" if match else "unsupported pickle content"


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write `obj` with torch.save so that `path` always holds a complete file: through
    `runs.atomic_write` (temp file, fsync, rename), whose failure keeps the previous file
    and names the OS error that torch.save itself would hide."""
    try:
        return atomic_write(Path(path), lambda f: torch.save(obj, f))
    except RunError as e:
        raise CheckpointError(str(e)) from None
