"""ultralytics' ``results.csv`` of a detector run: one column's values, one row per epoch.

ultralytics appends a row to ``RUN/results.csv`` after every epoch. The detector's
training (:mod:`medistill.boxes.detector`) reads the box loss from it to explain a weak
run, and keeps one row per epoch when a killed run resumes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from medistill.fileio import write_text_atomic

log = logging.getLogger("medistill.boxes")

RESULTS_CSV = "results.csv"  # ultralytics' table of epochs, one row each


def read_column(path: Path, name: str) -> list[float]:
    """The values of one column of ultralytics' ``results.csv`` (empty when absent)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    header = [cell.strip() for cell in lines[0].split(",")]
    if name not in header:
        return []
    index, values = header.index(name), []
    for line in lines[1:]:
        cells = line.split(",")
        try:
            values.append(float(cells[index]))
        except (IndexError, ValueError):
            continue
    return values


def keep_last_row_per_epoch(path: str | os.PathLike, drop_after: int | None = None) -> int:
    """Rewrite ultralytics' ``results.csv`` so that each epoch has one row; the number dropped.

    ultralytics appends an epoch's row before it saves ``last.pt``: a run killed between
    the two resumes from the previous checkpoint, trains that epoch again and appends its
    row a second time. Of several rows of one epoch the last one written wins; rows of
    epochs after ``drop_after`` (1-based) are dropped too. The header and the kept lines
    stay as they were, in epoch order; the file is replaced atomically, and left alone
    when nothing changes (also when it is missing or not a table of epochs).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split(",")[0].strip() != "epoch":
        return 0
    written = [line for line in lines[1:] if line.strip()]
    rows: dict[int, str] = {}
    for line in written:
        try:
            epoch = int(float(line.split(",")[0]))
        except ValueError:
            log.warning("%s has a row without an epoch number; the file is left as it is", path)
            return 0
        rows[epoch] = line  # the last row written wins
    kept = [rows[epoch] for epoch in sorted(rows) if drop_after is None or epoch <= drop_after]
    if kept != written:
        write_text_atomic(path, "\n".join([lines[0], *kept]) + "\n")
    return len(written) - len(kept)


def trim_before_resume(path: Path, saved_epoch: Any) -> None:
    """Before a resume: drop the rows of the epochs the run will train again.

    ``saved_epoch`` is the 0-based epoch of ``last.pt``; ultralytics resumes with the next
    one and appends its rows, so rows after epoch ``saved_epoch + 1`` (1-based) belong to
    epochs whose weights were lost in the kill.
    """
    if isinstance(saved_epoch, int) and saved_epoch >= 0:
        dropped = keep_last_row_per_epoch(path, drop_after=saved_epoch + 1)
    else:
        dropped = keep_last_row_per_epoch(path)
    if dropped:
        log.info("%s: %d row(s) of epochs trained again on resume removed", path, dropped)
