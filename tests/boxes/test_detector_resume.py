"""A resumed detector run keeps one ``results.csv`` row per epoch (issue 12, item 8).

ultralytics appends an epoch's row to ``results.csv`` before it saves ``last.pt``: a run
killed between the two resumes from the previous checkpoint, trains that epoch again
and appends its row a second time. These tests run in the test process with a stand-in
for ultralytics (no torch here; the real YOLO runs are in test_yolo_training.py).
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

import pytest

from medistill.boxes import detector
from medistill.boxes.detector import (
    RESULTS_CSV,
    DetectorTrainConfig,
    keep_last_row_per_epoch,
    train_detector,
)
from medistill.cli import main

HEADER = "epoch,time,train/box_loss,metrics/mAP50(B),lr/pg0"


def row(epoch: int, loss: float) -> str:
    return f"{epoch},{10.0 * epoch:.6g},{loss:.6g},0.1,0.003"


def epochs_of(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_the_last_row_of_a_repeated_epoch_wins_and_the_file_is_replaced(tmp_path):
    results = tmp_path / RESULTS_CSV
    results.write_text("\n".join([HEADER, row(1, 3.0), row(2, 2.5), row(2, 2.0), row(3, 1.5)]) + "\n")
    inode = results.stat().st_ino
    assert keep_last_row_per_epoch(results) == 1
    assert results.read_text() == "\n".join([HEADER, row(1, 3.0), row(2, 2.0), row(3, 1.5)]) + "\n"
    assert results.stat().st_ino != inode  # a new file renamed into place, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESULTS_CSV]  # no temporary left
    inode = results.stat().st_ino
    assert keep_last_row_per_epoch(results) == 0 and results.stat().st_ino == inode  # untouched


def test_rows_after_the_saved_epoch_are_dropped_and_odd_files_left_alone(tmp_path):
    results = tmp_path / RESULTS_CSV
    results.write_text("\n".join([HEADER, row(1, 3.0), row(2, 2.5), row(3, 2.0)]) + "\n")
    assert keep_last_row_per_epoch(results, drop_after=1) == 2 and epochs_of(results) == [1]
    assert keep_last_row_per_epoch(tmp_path / "missing.csv") == 0
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n1,3\n")
    assert keep_last_row_per_epoch(odd) == 0 and odd.read_text() == "a,b\n1,2\n1,3\n"


class FakeYOLO:
    """ultralytics.YOLO as far as a resumed train_detector uses it: training appends the
    rows of the epochs after the checkpoint's (0-based) epoch, as ultralytics does."""

    saved_epoch: int | None = 0
    interrupt = False
    seen_at_start: list[int] = []

    def __init__(self, weights: str):
        self.weights = Path(weights)
        self.task = "detect"
        self.ckpt = {"epoch": self.saved_epoch} if self.saved_epoch is not None else {}

    def train(self, resume: str, data: str):
        run = self.weights.parent.parent
        results = run / RESULTS_CSV
        type(self).seen_at_start = epochs_of(results)
        with open(results, "a") as stream:  # ultralytics' save_metrics
            stream.write(row(2, 2.0) + "\n")
            if self.interrupt:
                raise KeyboardInterrupt
            stream.write(row(3, 1.5) + "\n")
        (run / "weights" / "best.pt").write_bytes(b"best")
        self.trainer = types.SimpleNamespace(metrics={"metrics/mAP50(B)": 0.1})


@pytest.fixture
def killed_run(two_blob_set: Path, tmp_path: Path, monkeypatch):
    """A run killed after epoch 2's row was written but before its last.pt was saved."""
    assert main(["yolodata", "--data", str(two_blob_set), "--out", str(tmp_path / "yolo")]) == 0
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "last.pt").write_bytes(b"epoch 1")
    (run / "args.yaml").write_text("epochs: 3\n")
    (run / RESULTS_CSV).write_text("\n".join([HEADER, row(1, 3.0), row(2, 2.5)]) + "\n")
    fake = types.SimpleNamespace(YOLO=FakeYOLO)
    monkeypatch.setattr(detector, "ultralytics_session", lambda: contextlib.nullcontext(fake))
    monkeypatch.setattr(detector, "_versions", lambda: {})
    config = DetectorTrainConfig(data=str(tmp_path / "yolo" / "data.yaml"), out=str(run),
                                 epochs=3, imgsz=64, device="cpu")
    return run, config


def test_a_resumed_run_holds_each_epoch_once(killed_run, monkeypatch):
    run, config = killed_run
    monkeypatch.setattr(FakeYOLO, "saved_epoch", 0)
    train_detector(config)
    assert FakeYOLO.seen_at_start == [1]  # epoch 2's stale row went before it was trained again
    assert epochs_of(run / RESULTS_CSV) == [1, 2, 3]
    assert (run / RESULTS_CSV).read_text().splitlines()[2] == row(2, 2.0)  # the new epoch 2


def test_an_interrupted_resume_without_a_saved_epoch_keeps_the_last_row(killed_run, monkeypatch):
    run, config = killed_run
    monkeypatch.setattr(FakeYOLO, "saved_epoch", None)  # a checkpoint that does not say
    monkeypatch.setattr(FakeYOLO, "interrupt", True)
    with pytest.raises(KeyboardInterrupt):
        train_detector(config)
    assert FakeYOLO.seen_at_start == [1, 2]
    assert epochs_of(run / RESULTS_CSV) == [1, 2]
    assert (run / RESULTS_CSV).read_text().splitlines()[2] == row(2, 2.0)  # the last one written


def test_ultralytics_was_not_imported():
    assert "ultralytics" not in sys.modules
