"""One logger per run: lines go to the terminal (unless --quiet) and to train.log."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm


class RunLog:
    def __init__(self, path: Path | None, quiet: bool = False, enabled: bool = True) -> None:
        self.path = path
        self.quiet = quiet
        self.enabled = enabled  # False on DDP ranks other than 0

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if not self.quiet:
            tqdm.write(message, file=sys.stdout)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def warn(self, message: str) -> None:
        self("WARNING: " + message)
