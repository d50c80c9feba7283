"""A stage's per-epoch metrics on disk: `metrics.csv` (rank 0 only)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from richkd_deploy.runs import atomic_write_text


def metrics_csv(comments: Sequence[str], columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    for line in comments:
        buf.write(f"# {line}\n")
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


class MetricsWriter:
    """Rewrites `metrics.csv` whole after every epoch (atomically), from the history
    that `last.pt` also holds, so a resumed run's file is the uninterrupted run's."""

    def __init__(self, path: Path, columns: list[str], comments: Sequence[str] = ()) -> None:
        self.path = path
        self.columns = columns
        self.comments = list(comments)

    def write(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path, metrics_csv(self.comments, self.columns, history))
