"""Exit 0 when open_clip can load MODEL with pretrained TAG here (cached, or downloaded
within a time limit), 1 otherwise. `make demo` uses it to decide whether to fall back
to explicitly allowed random CLIP weights."""

from __future__ import annotations

import os
import subprocess
import sys

LOAD = "import open_clip, sys; open_clip.create_model(sys.argv[1], pretrained=sys.argv[2])"


def loads(model: str, tag: str, offline: bool, timeout: float) -> bool:
    env = dict(os.environ, HF_HUB_OFFLINE="1" if offline else "0")
    try:
        return subprocess.run([sys.executable, "-c", LOAD, model, tag], env=env, timeout=timeout,
                              capture_output=True).returncode == 0
    except subprocess.TimeoutExpired:
        return False


if __name__ == "__main__":
    model, tag = sys.argv[1], sys.argv[2]
    ok = loads(model, tag, offline=True, timeout=120) or loads(model, tag, offline=False, timeout=90)
    sys.exit(0 if ok else 1)
