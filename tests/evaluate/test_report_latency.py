"""The latency rows of `medistill report table`: present, positive, and saying what was timed.

A tiny untrained student (saved as a run folder) is evaluated by predict_eval; the
teacher is GrabCut (rebuilt from the cache's record); the detector's weights are gone,
so it gets no row and a warning instead of a crash. No figure is compared with another.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import pytest

from medistill.boxes import Box, BoxesFile, ImageBoxes, write_boxes
from medistill.cli import report as report_command
from medistill.data import write_image_png, write_mask_png
from medistill.errors import MedistillError


@pytest.fixture
def test_set(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for index in range(3):
        stem = f"img{index}"
        image = rng.normal(40, 5, (40, 48))
        image[10:24, 12:30] += 120
        mask = np.zeros((40, 48), np.uint8)
        mask[10:24, 12:30] = 255
        write_image_png(tmp_path / "images" / f"{stem}.png", np.clip(image, 0, 255).astype(np.uint8))
        write_mask_png(tmp_path / "masks" / f"{stem}.png", mask)
        entries.append(ImageBoxes(f"{stem}.png", stem, 48, 40, [Box(10, 8, 32, 26, score=0.9)]))
    write_boxes(tmp_path / "boxes.json", BoxesFile(["lesion"], entries, {"kind": "detector", "conf": 0.25,
                                                                           "weights": str(tmp_path / "gone.pt")}))
    return tmp_path


def student_run(folder):
    import keras

    from medistill.data.preprocess import PreprocessConfig
    from medistill.export import CARD_NAME, ModelCard
    from medistill.fileio import write_json_atomic
    from medistill.networks import build_student

    keras.utils.set_random_seed(0)
    folder.mkdir(parents=True)
    model = build_student("unet", in_channels=1, num_classes=1, base_filters=4, depth=2)
    model.save(str(folder / "model.keras"))
    write_json_atomic(folder / CARD_NAME, ModelCard(PreprocessConfig(size=32), 2).to_dict())
    return folder


def run_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    return report_command.run(parser.parse_args(argv))


def test_table_has_student_and_teacher_latency_rows(test_set, caplog):
    from medistill.evaluate.predict_eval import EvalConfig, predict_and_evaluate
    from medistill.teachers.cache import build_cache
    from medistill.teachers.grabcut import GrabCutTeacher

    root = test_set
    predict_and_evaluate(EvalConfig(image_dir=str(root / "images"), mask_dir=str(root / "masks"),
                                    model_path=str(student_run(root / "student")), vis_dir=str(root / "eval")))
    build_cache(GrabCutTeacher(), root / "images", root / "boxes.json", root / "teacher.h5", progress=False)
    assert run_report(["table", "--mask_dir", str(root / "masks"), "--image_dir", str(root / "images"),
                       "--boxes", str(root / "boxes.json"), "--teacher-cache", str(root / "teacher.h5"),
                       "--student-eval", str(root / "eval"), "--latency-images", "2",
                       "--out", str(root / "out")]) == 0
    table = pd.read_csv(root / "out" / "pipeline_report.csv").set_index("step")
    for step in ("student: latency", "teacher: latency"):
        row = table.loc[step]
        assert row["metric"] == "latency ms/image" and row["mean"] > 0 and math.isfinite(row["mean"])
        assert row["n"] == 2 and "batch 1, CPU" in row["details"]
    assert "preprocessing, network, resize back" in table.loc["student: latency", "details"]
    assert "grabcut" in table.loc["teacher: latency", "details"]
    assert "detector: latency" not in table.index  # its weights are gone: a warning, not a crash
    assert "no detector latency row" in caplog.text and "gone.pt" in caplog.text
    assert list(table["metric"][:2]) == ["box recall@IoU0.5", "Dice"]  # the Dice rows come first, as before

    assert run_report(["table", "--mask_dir", str(root / "masks"), "--student-eval", str(root / "eval"),
                       "--latency-images", "0", "--out", str(root / "off")]) == 0
    assert "latency ms/image" not in set(pd.read_csv(root / "off" / "pipeline_report.csv")["metric"])
    with pytest.raises(MedistillError, match="--latency-images"):
        run_report(["table", "--mask_dir", str(root / "masks"), "--student-eval", str(root / "eval"),
                    "--latency-images", "-1"])
