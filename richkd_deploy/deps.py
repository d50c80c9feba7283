"""Lazy imports of optional heavy packages, with errors that name the pip extra.

`import richkd_deploy`, `import exporters`, `import richkd_deploy.runtime` and `--help` must work with only the core
dependencies installed; each optional package is imported inside the function that
needs it, through `require`, so a missing one becomes a MissingDependencyError that
tells the user what to install instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from richkd_deploy.errors import MissingDependencyError

TRT_MISSING = ('TensorRT is not installed: pip install "richkd-deploy[trt]" on a machine with an NVIDIA GPU, '
               "then rerun with --trt --force")

_HINTS = {
    "onnxruntime": 'onnxruntime is not installed: pip install "richkd-deploy[cpu]" (or "richkd-deploy[gpu]" on an '
                   "NVIDIA machine; never both)",
    "tensorrt": TRT_MISSING,
    "openvino": 'OpenVINO is not installed: pip install "richkd-deploy[openvino]"',
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = _HINTS.get(module) or (f'{module} is not installed: pip install "richkd-deploy[{extra}]"' if extra
                                      else f"{module} is not installed: pip install {module}")
        raise MissingDependencyError(hint) from exc


def available(module: str) -> bool:
    """True when `module` imports; never raises (a broken install counts as absent)."""
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a half-installed tensorrt raises OSError, not ImportError
        return False
    return True
