"""A detector that learned nothing is named, with its cause and fix, and fails the command unless accepted."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from medistill.boxes import detector
from medistill.boxes.detector import DetectorRun, weak_detector_warning
from medistill.cli import detect as detect_command


def finished_run(folder: Path, recall: float, map50: float) -> DetectorRun:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.csv").write_text("epoch,train/box_loss,train/cls_loss\n1,2.07,3.0\n2,3.10,2.9\n3,4.40,2.8\n")
    return DetectorRun(folder, folder / "weights" / "best.pt", folder / "weights" / "last.pt",
                       {"metrics/precision(B)": 0.0, "metrics/recall(B)": recall, "metrics/mAP50(B)": map50},
                       1.0)


def test_the_warning_gives_the_facts_and_the_fix(tmp_path):
    text = weak_detector_warning(finished_run(tmp_path / "run", 0.0, 0.0), batch=8, train_images=9)
    assert "learned nothing" in text and "recall 0.000, mAP50 0.000" in text
    assert "box loss rose from 2.07 to 4.40 over 3 epoch(s)" in text
    assert "9 training images at batch 8: about 6 optimizer steps" in text
    assert "--epochs" in text and "--batch" in text and "--accept-weak-detector" in text
    assert weak_detector_warning(finished_run(tmp_path / "good", 0.4, 0.3), batch=8) is None
    assert weak_detector_warning(finished_run(tmp_path / "some", 0.0, 0.05), batch=8) is None


@pytest.mark.parametrize("accept, status", [(False, detect_command.WEAK_EXIT), (True, 0)])
def test_detection_train_exits_non_zero_unless_accepted(tmp_path, monkeypatch, accept, status):
    run = finished_run(tmp_path / "run", 0.0, 0.0)
    monkeypatch.setattr(detector, "train_detector", lambda config: run)
    monkeypatch.setattr(detector, "check_data_yaml",
                        lambda path: type("Data", (), {"images": lambda self, split: 9})())
    parser = argparse.ArgumentParser()
    detect_command.add_arguments(parser)
    argv = ["train", "--data", "data.yaml", "--out", str(run.folder)] + (["--accept-weak-detector"] if accept else [])
    assert detect_command.run(parser.parse_args(argv)) == status
