"""The table `richkd-deploy models` prints: name, parameter count, default input size.

Counting parameters means building a model, and timm has ~1,400 of them at
0.1-0.3 s each even on the meta device, so listing them all would take minutes.
So: torchvision's counts come from its weight metadata (no build); zoo models are
tiny and built; timm models are built on the meta device only when they match,
at most `TIMM_BUDGET` per call, and the counts are cached on disk per timm
version, so a narrower pattern (or the next call) fills in the rest.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from richkd_deploy.errors import RunError
from richkd_deploy.models import external
from richkd_deploy.models.registry import create_model, list_all_models
from richkd_deploy.runs import atomic_write_json

log = logging.getLogger(__name__)

TIMM_BUDGET = 25  # timm models counted per call when not cached (~5 s)
ZOO_INPUT_SIZE = 32


@dataclass(frozen=True)
class ModelRow:
    name: str
    params: int | None  # None: not counted in this call (see TIMM_BUDGET)
    input_size: int


def _cache_path() -> Path:
    base = Path(os.environ.get("RICHKD_CACHE", Path.home() / ".cache" / "richkd-deploy"))
    return base / f"timm-params-{external._timm().__version__}.json"


def _read_cache(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}


def model_rows(pattern: str | None = None, budget: int = TIMM_BUDGET) -> list[ModelRow]:
    rows: list[ModelRow] = []
    timm_names = []
    for name in list_all_models(pattern):
        if "/" not in name:
            model = create_model(name, num_classes=100)
            rows.append(ModelRow(name, sum(p.numel() for p in model.parameters()), ZOO_INPUT_SIZE))
        elif name.startswith("torchvision/"):
            info = external.info(name)
            rows.append(ModelRow(name, info.params, info.input_size))
        else:
            timm_names.append(name)
    if not timm_names:
        return rows
    path = _cache_path()
    cache = _read_cache(path)
    counted = 0
    for name in timm_names:
        if name not in cache and counted < budget:
            try:
                cache[name] = external.count_params_meta(name)
            except Exception as e:  # noqa: BLE001 -- a library model that cannot be built on meta: shown as '?'
                log.debug("cannot count %s on the meta device: %s", name, e)
            counted += 1
        rows.append(ModelRow(name, cache.get(name), external.timm_input_size(name.split("/", 1)[1])))
    if counted:
        try:
            atomic_write_json(path, cache)
        except RunError as e:  # a read-only home: counts are recomputed next time
            log.debug("parameter cache not written: %s", e)
    return rows


def format_params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"
