"""A stage's per-epoch metrics on disk (rank 0 only).

- `metrics.csv`: the header is the first line, one row per epoch, nothing else, so
  `pandas.read_csv`, `csv.DictReader` and spreadsheets read it as it is.
- `metrics.json` beside it: what used to be `#` comment lines at the top of the CSV
  (version, method, recipe hash, CLIP weights), the columns, and the last and best
  epochs (best by holdout top-1, when the stage has a holdout split).
- TensorBoard event files in the same folder when `tensorboard` is installed (each
  loss term, the accuracies, the learning rate; step = epoch), so long runs can be
  watched with `tensorboard --logdir runs/`. They are appended as the run goes, like
  train.log; a resumed run purges the steps it redoes.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from richkd_deploy.runs import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def metrics_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


class MetricsWriter:
    """Rewrites `metrics.csv` and `metrics.json` whole after every epoch (atomically),
    from the history that `last.pt` also holds, so a resumed run's files are the
    uninterrupted run's."""

    def __init__(self, path: Path, columns: list[str], comments: Sequence[str] = (), first_epoch: int = 1) -> None:
        self.path = path
        self.columns = columns
        self.comments = list(comments)
        self.first_epoch = first_epoch  # epochs before it are already in the event files
        self._board: Any = None

    @property
    def summary_path(self) -> Path:
        return self.path.with_suffix(".json")

    def write(self, history: list[dict[str, Any]], best_epoch: int | None = None) -> None:
        atomic_write_text(self.path, metrics_csv(self.columns, history))
        doc: dict[str, Any] = {"notes": self.comments, "columns": self.columns,
                               "last": history[-1] if history else None}
        if best_epoch and 0 < best_epoch <= len(history):
            doc["best"] = history[best_epoch - 1]
            doc["best_by"] = "holdout_acc" if "holdout_acc" in history[best_epoch - 1] else "last epoch"
        atomic_write_json(self.summary_path, doc)
        if history:
            self._to_tensorboard(history[-1])

    def _to_tensorboard(self, row: dict[str, Any]) -> None:
        board = self._tensorboard()
        if board is None:
            return
        step = int(row["epoch"])
        for key, value in row.items():
            if key in ("epoch", "best_epoch") or not isinstance(value, (int, float)):
                continue
            board.add_scalar(tensorboard_tag(key), float(value), global_step=step)
        board.flush()

    def _tensorboard(self) -> Any:
        """The event-file writer, made on first use; None when tensorboard is not installed."""
        if self._board is None and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter  # optional: only with tensorboard installed

            # purge_step: a resumed run drops the events of epochs it trains again
            self._board = SummaryWriter(log_dir=str(self.path.parent), purge_step=self.first_epoch)
        return self._board

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None


def tensorboard_tag(column: str) -> str:
    """metrics.csv column -> TensorBoard tag, grouped as loss/, acc/, lr, time/:
    `train_loss` -> `loss/train`, `test_acc` -> `acc/test`, a loss term `ce` -> `loss/ce`."""
    for kind in ("loss", "acc"):
        if column.endswith(f"_{kind}"):
            return f"{kind}/{column[: -len(kind) - 1]}"
    if column == "lr":
        return "lr"
    if column == "seconds":
        return "time/epoch_seconds"
    return f"loss/{column}"  # the stage's weighted loss terms
