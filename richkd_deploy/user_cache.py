"""Where richkd-deploy keeps per-user downloads: one place, following the XDG convention.

Datasets and packaged recipes' relative paths need a folder that belongs to the user and
survives between runs; the package directory (site-packages) is neither. The XDG base
directory rule (`$XDG_CACHE_HOME`, else `~/.cache`) is what pip, torch and Hugging Face use.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/richkd-deploy`, or `~/.cache/richkd-deploy` when it is unset or relative
    (the XDG rule: a relative value is invalid and ignored)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "richkd-deploy"


def data_dir() -> Path:
    """Datasets (CIFAR downloads) and the anchor of relative paths in packaged recipes."""
    return cache_dir() / "data"
