"""The pipeline's summary table, computed from hand-made boxes, teacher cache, eval folders and masks."""

from __future__ import annotations

import argparse
import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest

from medistill.boxes import Box, BoxesFile, ImageBoxes, write_boxes
from medistill.cli import report as report_command
from medistill.data import write_mask_png
from medistill.errors import MedistillError
from medistill.evaluate import pipeline_report as pr
from medistill.evaluate.report import summarise, write_report
from medistill.teachers.base import Teacher, TeacherOutput, mask_uncertainty
from medistill.teachers.cache import build_cache

SHAPE = (16, 16)


def square(top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(SHAPE, np.int32)
    mask[top:top + size, left:left + size] = 1
    return mask


# Test set: "a" has two 4x4 lesions, "b" one, "c" none.
MASKS = {"a": square(0, 0, 4) + square(8, 8, 4), "b": square(4, 4, 4), "c": np.zeros(SHAPE, np.int32)}


def write_masks(folder, masks=MASKS):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, mask in masks.items():
        write_mask_png(folder / f"{stem}.png", (mask * 255).astype(np.uint8))
    return folder


def detector_boxes() -> BoxesFile:
    entries = {"a": [Box(0, 0, 4, 4, score=0.8)],  # finds one of two
               "b": [Box(4, 4, 8, 8, score=0.7), Box(12, 0, 16, 4, score=0.6)],  # right + wrong
               "c": []}
    return BoxesFile(["lesion"], [ImageBoxes(f"{s}.png", s, 16, 16, b) for s, b in entries.items()],
                     {"kind": "detector", "conf": 0.3})


class FixedMasksTeacher(Teacher):
    """Returns the given fused soft mask of each image (looked up by its pixel values)."""

    name = "litemedsam"

    def __init__(self, fused: dict[str, np.ndarray]) -> None:
        self.fused = fused

    def _predict(self, image, boxes):
        stem = "abc"[int(image[0, 0, 0])]
        masks = np.repeat(self.fused[stem][None].astype(np.float32), len(boxes), axis=0)
        return TeacherOutput(masks, mask_uncertainty(masks), None, None, None, boxes)


def write_cache(path, fused: dict[str, np.ndarray], done=True):
    """A real teacher cache of images a, b, c (pixel value 0, 1, 2) whose fused masks are ``fused``."""
    folder = path.parent / f"{path.stem}_images"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for stem, soft in fused.items():
        height, width = soft.shape
        write_mask_png(folder / f"{stem}.png", np.full(soft.shape, "abc".index(stem), np.uint8))
        entries.append(ImageBoxes(f"{stem}.png", stem, width, height, [Box(0, 0, width, height)]))
    write_boxes(path.parent / f"{path.stem}_boxes.json", BoxesFile(["lesion"], entries, {"kind": "masks"}))
    build_cache(FixedMasksTeacher(fused), folder, path.parent / f"{path.stem}_boxes.json", path, progress=False)
    if not done:  # what a writer killed half-way through an image leaves
        with h5py.File(path, "a") as handle:
            for group in handle["images"].values():
                group.attrs["done"] = False
    return path


def teacher_soft_masks() -> dict[str, np.ndarray]:
    a = 0.9 * square(0, 0, 4)  # finds lesion 1 only: Dice 2*16/(16+32) = 2/3
    b = 0.7 * square(4, 4, 4) + 0.4 * square(0, 12, 2)  # 0.4 stays below 0.5: Dice 1
    c = np.full(SHAPE, 0.2)  # nothing above 0.5: both empty, Dice 1
    return {"a": a, "b": b, "c": c}


def write_eval(folder, dice: list[float]):
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(len(dice))], "case": ["normal"] * len(dice),
                          "dice": dice, "hd95": [2.0] * len(dice)})
    folder.mkdir(parents=True, exist_ok=True)
    write_report(frame, summarise(frame), folder / "metrics.csv", folder / "metrics.json")
    return folder


def test_load_masks_reads_stems_and_binary_values(tmp_path):
    masks = pr.load_masks(write_masks(tmp_path / "masks"))
    assert sorted(masks) == ["a", "b", "c"]
    np.testing.assert_array_equal(masks["a"], MASKS["a"])  # {0, 255} read back as {0, 1}
    with pytest.raises(MedistillError, match="need --image_dir"):
        pr.load_masks(tmp_path / "masks", mask_suffix="_mask")


def test_box_recall_row_by_hand():
    row = pr.box_recall_row("detector", detector_boxes(), MASKS)
    assert row.metric == "box recall@IoU0.5"
    assert row.mean == pytest.approx(2 / 3) and row.n == 3 and row.unit == "boxes"
    assert "conf 0.3" in row.details and "precision 0.667" in row.details
    assert "2/3 boxes found" in row.details and "1/3 images without a box" in row.details


def test_teacher_row_by_hand(tmp_path):
    cache = write_cache(tmp_path / "teacher.h5", teacher_soft_masks())
    row = pr.teacher_row("teacher", cache, MASKS)
    dice = [2 / 3, 1.0, 1.0]
    assert row.mean == pytest.approx(np.mean(dice))
    assert row.std == pytest.approx(np.std(dice, ddof=1))
    assert row.n == 3 and "both_empty 1" in row.details and "normal 2" in row.details
    # threshold 0.15 lets the 0.4 blob of "b" in (Dice 2*16/(16+20)) and all of "c" (Dice 0)
    lower = pr.teacher_row("teacher", cache, MASKS, threshold=0.15)
    assert lower.mean == pytest.approx(np.mean([2 / 3, 32 / 36, 0.0]))


def test_teacher_cache_problems_are_named(tmp_path):
    partial = write_cache(tmp_path / "partial.h5", {"a": teacher_soft_masks()["a"]})
    with pytest.raises(MedistillError, match="no entry for image 'b'"):
        pr.teacher_row("teacher", partial, MASKS)
    unfinished = write_cache(tmp_path / "unfinished.h5", teacher_soft_masks(), done=False)
    with pytest.raises(MedistillError, match="unfinished"):
        pr.teacher_row("teacher", unfinished, MASKS)
    wrong = write_cache(tmp_path / "wrong.h5", {s: np.zeros((8, 8)) for s in MASKS})
    with pytest.raises(MedistillError, match="other images"):
        pr.teacher_row("teacher", wrong, MASKS)
    with pytest.raises(MedistillError, match="does not exist"):
        pr.teacher_row("teacher", tmp_path / "missing.h5", MASKS)


def test_evaluation_row_reads_predict_eval_summary(tmp_path):
    folder = write_eval(tmp_path / "eval", [0.5, 0.7, 0.9])
    row = pr.evaluation_row("student", folder)
    assert (row.mean, row.n) == (pytest.approx(0.7), 3)
    assert row.std == pytest.approx(0.2)
    assert "HD95 2.0 px (n 3)" in row.details
    assert pr.evaluation_row("student", folder / "metrics.json") == row
    with pytest.raises(MedistillError, match="run predict_eval.py"):
        pr.evaluation_row("student", tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text(json.dumps({"per_image": []}))
    with pytest.raises(MedistillError, match="not a predict_eval.py metrics.json"):
        pr.evaluation_row("student", tmp_path / "bad.json")


def test_formats_and_files(tmp_path):
    rows = [pr.ReportRow("detector", "box recall@IoU0.5", 0.5, math.nan, 4, "boxes", "conf 0.3"),
            pr.ReportRow("student", "Dice", 0.75, 0.1, 3)]
    text = pr.format_text(rows).splitlines()
    assert text[0].split() == ["step", "metric", "mean", "std", "n", "details"]
    assert text[2].split()[:6] == ["detector", "box", "recall@IoU0.5", "0.500", "-", "4"]
    markdown = pr.format_markdown(rows)
    assert "| student | Dice | 0.750 | 0.100 | 3 images |  |" in markdown
    times = [pr.StepTime("01-data", 2.0, 1.5, "t1"), pr.StepTime("02-detector", 60.5, 100.0, "t2")]
    paths = pr.write_outputs(rows, tmp_path / "out", times)
    table = pd.read_csv(paths["csv"])
    assert list(table["step"]) == ["detector", "student"] and math.isnan(table["std"][0])
    document = json.loads(paths["json"].read_text())
    assert document["rows"][0]["std"] is None and document["timings"][1]["seconds"] == 60.5
    assert "| total | 62.5 | 101.5 | 1.0 min wall |" in paths["md"].read_text()


def test_step_times_are_read_in_file_order(tmp_path):
    steps = tmp_path / "steps"
    steps.mkdir()
    (steps / "02-b").write_text(json.dumps({"step": "02-b", "seconds": 3.5, "cpu_seconds": None,
                                            "finished": "x"}))
    (steps / "01-a").write_text(json.dumps({"step": "01-a", "seconds": 1.0, "cpu_seconds": 1.75}))
    (steps / ".03-c.start").write_text("1795362063.7 100")  # a step still running
    times = pr.read_step_times(steps)
    assert [(t.step, t.seconds, t.cpu_seconds) for t in times] == [("01-a", 1.0, 1.75), ("02-b", 3.5, None)]
    text = pr.format_timings(times).splitlines()
    assert text[1].split() == ["01-a", "1.0", "1.8"] and text[2].split() == ["02-b", "3.5", "-", "x"]
    assert text[-1].split()[:3] == ["total", "4.5", "-"]  # CPU total unknown when a step lacks it
    assert pr.read_step_times(tmp_path / "none") == []
    (steps / "03-c").write_text("not json")
    with pytest.raises(MedistillError, match="03-c is not a step record"):
        pr.read_step_times(steps)


def run_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    return report_command.run(parser.parse_args(argv))


def test_report_command_table_and_conf(tmp_path, capsys):
    masks = write_masks(tmp_path / "masks")
    boxes = tmp_path / "boxes.json"
    write_boxes(boxes, detector_boxes())
    cache = write_cache(tmp_path / "teacher.h5", teacher_soft_masks())
    student, supervised = write_eval(tmp_path / "student", [0.6]), write_eval(tmp_path / "sup", [0.8])
    assert run_report(["table", "--mask_dir", str(masks), "--boxes", str(boxes), "--teacher-cache", str(cache),
                       "--student-eval", str(student), "--supervised-eval", str(supervised),
                       "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "on 3 held-out images" in printed and "teacher (litemedsam) on detector boxes" in printed
    table = pd.read_csv(tmp_path / "out" / "pipeline_report.csv")
    assert list(table["metric"]) == ["box recall@IoU0.5", "Dice", "Dice", "Dice", "Dice"]
    assert table["step"][1] == "detector boxes as masks (no segmentation)"
    # filled boxes: a 16 of 32 pixels (Dice 2/3), b 32 pixels for 16 (2/3), c both empty (1)
    assert list(table["mean"]) == pytest.approx([2 / 3, np.mean([2 / 3, 2 / 3, 1]), np.mean([2 / 3, 1, 1]), 0.6, 0.8])
    images = pd.read_csv(tmp_path / "out" / "pipeline_report_images.csv").set_index("image")
    assert list(images.loc[["a", "b", "c"], "teacher (litemedsam) on detector boxes Dice"]) == pytest.approx([2 / 3, 1, 1], abs=1e-4)
    assert images.loc["0", "distilled student (no masks) Dice"] == pytest.approx(0.6)  # its metrics.csv, image 0.png

    assert run_report(["conf", "--mask_dir", str(masks), "--boxes", str(boxes), "--candidates", "0.3", "0.65",
                       "--out", str(tmp_path / "conf.txt")]) == 0
    # conf 0.3: 2 of 3 found, 2 of 3 kept right (F1 2/3); 0.65: 2 found of 2 kept (F1 0.8)
    assert (tmp_path / "conf.txt").read_text() == "0.65\n"
    with pytest.raises(MedistillError, match="nothing to report"):
        run_report(["table", "--mask_dir", str(masks)])


def test_report_conf_names_its_sample_and_refuses_a_detector_that_finds_nothing(tmp_path, capsys, caplog):
    import logging

    masks = write_masks(tmp_path / "masks")
    boxes = tmp_path / "boxes.json"
    write_boxes(boxes, detector_boxes())
    logging.getLogger("medistill").addHandler(caplog.handler)
    try:
        assert run_report(["conf", "--mask_dir", str(masks), "--boxes", str(boxes), "--candidates", "0.3", "0.65"]) == 0
        assert "decided by 3 images with 3 ground-truth boxes" in capsys.readouterr().out
        assert "only 3 image(s) with 3 ground-truth box(es)" in caplog.text  # below the minimum
        caplog.clear()
        wrong = BoxesFile(["lesion"], [ImageBoxes(f"{s}.png", s, 16, 16, [Box(12, 12, 16, 16, score=0.9)])
                                       for s in MASKS], {"kind": "detector", "conf": 0.05})
        write_boxes(boxes, wrong)
        conf = tmp_path / "conf.txt"
        argv = ["conf", "--mask_dir", str(masks), "--boxes", str(boxes), "--out", str(conf)]
        assert run_report(argv) == report_command.WEAK_EXIT and not conf.exists()
        assert "miss every object" in caplog.text and "--accept-weak-detector" in caplog.text
        assert run_report(argv + ["--accept-weak-detector"]) == 0
        assert conf.read_text() == "0.05\n"
    finally:
        logging.getLogger("medistill").removeHandler(caplog.handler)


def test_label_masks_get_per_class_rows_and_ground_truth_boxes_are_named(tmp_path, capsys):
    """Two organs: the union Dice looks fine while one organ is missed entirely."""
    liver, kidney = square(0, 0, 8), square(10, 10, 4)
    labels = {"a": liver + 2 * kidney, "b": liver + 2 * kidney}
    masks = tmp_path / "masks"
    masks.mkdir()
    for stem, mask in labels.items():
        write_mask_png(masks / f"{stem}.png", mask.astype(np.uint8))
    entries = [ImageBoxes(f"{s}.png", s, 16, 16, [Box(0, 0, 8, 8, class_id=0), Box(10, 10, 14, 14, class_id=0)])
               for s in labels]  # the kidney's box carries the liver's class: class 2 never predicted
    boxes = tmp_path / "oracle.json"
    write_boxes(boxes, BoxesFile(["liver", "kidney"], entries, {"kind": "masks"}))
    assert run_report(["table", "--mask_dir", str(masks), "--boxes", str(boxes), "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "pipeline_report.csv")
    means = dict(zip(table["step"], table["mean"]))
    assert means["ground-truth boxes as masks (no segmentation)"] == pytest.approx(1.0)
    assert means["ground-truth boxes as masks (no segmentation), class liver"] == pytest.approx(128 / 144)
    assert means["ground-truth boxes as masks (no segmentation), class kidney"] == pytest.approx(0.0)
    assert "detector" not in " ".join(table["step"])
