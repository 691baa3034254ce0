"""The summary table of the whole pipeline on held-out images with ground-truth masks.

Each row says what one stage of the unsupervised pipeline achieves on the same test
images, computed from the files that stage left behind:

- **detector**: box recall at IoU 0.5 of the detector's boxes file (``detection.py
  predict``) against one box per connected component of each ground-truth mask
  (the rule of ``Creat_yolodata.py``), matched one-to-one per image, same class;
- **teacher**: Dice of the teacher's cached fused soft mask (``medistill teach``,
  pixel-wise max over the detector's boxes) thresholded at 0.5, against the mask's
  foreground; an image without a box has an empty teacher mask;
- **box as mask**: Dice of the boxes themselves, filled (the pixels whose centres lie
  inside a box): the baseline a segmentation must beat (on large, compact targets
  such as a brain the box alone is often close);
- **students**: the Dice summary that ``predict_eval.py`` wrote (``metrics.json``) for
  the distilled student and for the supervised upper bound.

Rows name their boxes "ground-truth boxes" when the boxes file was made from masks
(``source.kind == "masks"``) and "detector boxes" otherwise. With label masks (more
than one foreground class) the box-as-mask and teacher rows are followed by one Dice
row per class (a box of class ``k`` against the mask's label ``k + 1``; the teacher's
per-class mask is the maximum over its boxes of that class), since a foreground-union
Dice hides classes that are missed. :func:`image_table` joins the per-image Dice of
every row into one table (``pipeline_report_images.csv``).

Dice follows :func:`medistill.evaluate.metrics.binary_metrics` (an image where both
masks are empty counts 1, a missed or false-positive image 0), so the teacher's row
and the students' rows are comparable. Step timings come from the ``steps/`` folder of
``make demo`` (one JSON file per finished step: wall time, and the CPU time of its
commands, the figure that stays fair when other work shares the machine).

Example::

    masks = load_masks("data/test/masks")
    rows = [box_recall_row("detector", read_boxes("boxes/test.json"), masks),
            teacher_row("teacher", "runs/teacher_test.h5", masks),
            evaluation_row("student", "eval/student")]
    print(format_text(rows))
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from medistill.boxes.boxes_file import BoxesFile
from medistill.boxes.components import boxes_to_mask
from medistill.boxes.scoring import match_by_stem, truth_boxes
from medistill.errors import MedistillError
from medistill.evaluate.metrics import METRIC_NAMES, binary_metrics
from medistill.evaluate.report import MetricTable, to_jsonable
from medistill.fileio import write_json_atomic, write_text_atomic

REPORT_NAME = "pipeline_report"
IMAGES_NAME = "pipeline_report_images.csv"
_OTHER_METRICS = tuple(name for name in METRIC_NAMES if name != "dice")


@dataclass(frozen=True)
class ReportRow:
    """One line of the table: a stage, its metric and the statistics of that metric."""

    step: str
    metric: str
    mean: float
    std: float = math.nan
    n: int = 0
    unit: str = "images"
    details: str = ""


# --------------------------------------------------------------------------- inputs


def load_masks(mask_dir: str | os.PathLike, image_dir: str | os.PathLike | None = None,
               mask_suffix: str = "", mask_mode: str = "auto",
               mask_pattern: str | None = None) -> dict[str, np.ndarray]:
    """``{stem: mask}`` of the ground truth, mask rule of :func:`medistill.data.io.read_mask`.

    With ``image_dir`` the masks are paired with their images (``mask_suffix`` then
    applies, and ``mask_pattern`` merges several files per image); without it every file
    of ``mask_dir`` is a mask named by its stem.
    """
    from medistill.data import pair_folder
    from medistill.data.samples import load_sample_mask

    if image_dir is not None:
        samples = pair_folder(image_dir, mask_dir, mask_suffix=mask_suffix, mask_mode=mask_mode,
                              mask_pattern=mask_pattern)
    else:
        if mask_suffix or mask_pattern:
            raise MedistillError("--mask-suffix and --mask-pattern need --image_dir (they say how masks "
                                 "pair with images)")
        samples = [replace(s, mask_path=s.image_path) for s in pair_folder(mask_dir)]
    if not samples:
        raise MedistillError(f"{mask_dir}: no masks found; pass the folder of the test masks")
    return {sample.stem: load_sample_mask(sample, mask_mode) for sample in samples}


def read_eval_summary(path: str | os.PathLike) -> dict:
    """The ``summary`` of a ``predict_eval.py`` report: its ``--vis_dir`` or ``metrics.json``."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise MedistillError(f"{file} does not exist; run predict_eval.py with --mask_dir and "
                             f"--vis_dir {path} first")
    try:
        document = json.loads(file.read_text())
        summary = document["summary"]
        summary["metrics"]["dice"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise MedistillError(f"{file} is not a predict_eval.py metrics.json with a Dice summary "
                             f"({error!r}); rerun predict_eval.py with --mask_dir") from error
    return summary


# --------------------------------------------------------------------------- boxes


def box_recall_row(step: str, detected: BoxesFile, masks: Mapping[str, np.ndarray],
                   iou: float = 0.5, min_area: int = 1) -> ReportRow:
    """The detector's row: box recall against boxes from the masks."""
    match = match_by_stem(detected, truth_boxes(masks, min_area), iou=iou)
    empty = sum(1 for entry in detected.images if not entry.boxes)
    conf = detected.source.get("conf")
    details = [f"precision {_fmt(match.precision)}", f"{match.matched}/{match.truths} boxes found",
               f"mean IoU {_fmt(match.mean_iou)}", f"{empty}/{len(detected.images)} images without a box"]
    if conf is not None:
        details.insert(0, f"conf {conf}")
    return ReportRow(step, f"box recall@IoU{iou:g}", match.recall, math.nan, match.truths, "boxes",
                     "; ".join(details))


def boxes_name(detected: BoxesFile) -> str:
    """``"ground-truth boxes"`` for a boxes file made from masks, else ``"detector boxes"``."""
    return "ground-truth boxes" if detected.source.get("kind") == "masks" else "detector boxes"


def box_mask_table(detected: BoxesFile, masks: Mapping[str, np.ndarray], label: int | None = None) -> MetricTable:
    """Per-image metrics of the filled boxes (of class ``label - 1`` only, with ``label``) against the masks."""
    found = detected.by_stem()
    table = MetricTable()
    for stem in sorted(masks):
        truth = masks[stem]
        entry = found.get(stem)
        if entry is None:
            raise MedistillError(f"the boxes file has no entry for {stem!r}, an image with a mask; "
                                 "predict boxes for every test image")
        boxes = [box for box in entry.boxes if label is None or box.class_id == label - 1]
        prediction = boxes_to_mask(boxes, *truth.shape)
        table.add(stem, binary_metrics(prediction, truth > 0 if label is None else truth == label))
    return table


def foreground_labels(masks: Mapping[str, np.ndarray]) -> list[int]:
    """The foreground labels of label masks; empty for binary masks (nothing per class to show)."""
    labels = sorted({int(v) for mask in masks.values() for v in np.unique(mask) if v > 0})
    return labels if len(labels) > 1 else []


def class_name(names: Sequence[str], label: int) -> str:
    return names[label - 1] if 0 < label <= len(names) else f"label {label}"


# --------------------------------------------------------------------------- masks


def teacher_table(cache_path: str | os.PathLike, masks: Mapping[str, np.ndarray],
                  threshold: float = 0.5, label: int | None = None) -> MetricTable:
    """Per-image metrics of the cached fused soft masks ``> threshold`` against the masks.

    With ``label``: the maximum over the boxes of class ``label - 1`` against ``mask == label``.
    """
    from medistill.teachers.cache import CacheReader

    table = MetricTable()
    path = Path(cache_path)
    with CacheReader(path) as cache:
        for stem in sorted(masks):
            entry = cache.entry(stem, features=False)
            soft, truth = entry.fused, masks[stem]
            if soft.shape != truth.shape:
                raise MedistillError(f"{path}: the teacher mask of {stem!r} is {soft.shape} but its ground "
                                     f"truth is {truth.shape}; was the cache made from other images?")
            if label is None:
                table.add(stem, binary_metrics(soft > threshold, truth > 0))
                continue
            chosen = np.flatnonzero(entry.box_classes == label - 1)
            per_box = cache.masks(stem)[chosen] if len(chosen) else np.zeros((1, *soft.shape), np.float32)
            table.add(stem, binary_metrics(per_box.max(axis=0) > threshold, truth == label))
    return table


def teacher_row(step: str, cache_path: str | os.PathLike, masks: Mapping[str, np.ndarray],
                threshold: float = 0.5) -> ReportRow:
    """The teacher's row: Dice of its thresholded fused soft masks."""
    return summary_row(step, teacher_table(cache_path, masks, threshold).summary())


def image_table(tables: Mapping[str, MetricTable]) -> "pd.DataFrame":
    """One row per image, one ``<name> Dice`` column per table (outer join on the image)."""
    import pandas as pd

    joined = None
    for name, table in tables.items():
        frame = table.frame()[["image", "dice"]].rename(columns={"dice": f"{name} Dice"})
        joined = frame if joined is None else joined.merge(frame, on="image", how="outer")
    return joined if joined is not None else pd.DataFrame({"image": []})


def eval_image_table(eval_path: str | os.PathLike) -> MetricTable | None:
    """A student's per-image Dice from ``predict_eval.py``'s ``metrics.csv`` (images named by stem)."""
    import pandas as pd

    path = Path(eval_path)
    csv_path = (path if path.is_dir() else path.parent) / "metrics.csv"
    if not csv_path.is_file():
        return None
    frame = pd.read_csv(csv_path)
    table = MetricTable()
    for image, dice, case in zip(frame["image"], frame["dice"], frame["case"]):
        table.add(Path(str(image)).stem.split(".")[0], {"case": case, "dice": dice,
                                                         **{name: math.nan for name in _OTHER_METRICS}})
    return table


def evaluation_row(step: str, eval_path: str | os.PathLike) -> ReportRow:
    """A student's row from the ``metrics.json`` that ``predict_eval.py`` wrote."""
    return summary_row(step, read_eval_summary(eval_path))


def summary_row(step: str, summary: Mapping) -> ReportRow:
    """A Dice row from a :func:`medistill.evaluate.report.summarise` result."""
    dice = summary["metrics"]["dice"]
    hd95 = summary["metrics"].get("hd95", {})
    cases = summary.get("cases", {})
    details = []
    if hd95.get("n"):
        details.append(f"HD95 {_fmt(hd95.get('mean'), 1)} px (n {hd95['n']})")
    shown = {name: count for name, count in cases.items() if count}
    if shown:
        details.append("cases " + ", ".join(f"{name} {count}" for name, count in shown.items()))
    return ReportRow(step, "Dice", _number(dice.get("mean")), _number(dice.get("std")),
                     int(dice.get("n") or 0), "images", "; ".join(details))


# --------------------------------------------------------------------------- output

_COLUMNS = ("step", "metric", "mean", "std", "n", "details")


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _cells(row: ReportRow) -> list[str]:
    return [row.step, row.metric, _fmt(row.mean), _fmt(row.std), f"{row.n} {row.unit}", row.details]


def format_text(rows: Sequence[ReportRow]) -> str:
    """A fixed-width table for the terminal ('-' marks an undefined value)."""
    table = [list(_COLUMNS)] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS) - 1)]
    lines = []
    for index, line in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
        if index == 0:
            lines.append("-" * (sum(widths) + 2 * len(widths) + len(line[-1])))
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(rows: Sequence[ReportRow]) -> str:
    """The table in Markdown."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "| " + " | ".join("---" for _ in _COLUMNS) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in _cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def format_csv(rows: Sequence[ReportRow]) -> str:
    """One CSV line per row (empty cells for undefined values)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0]) if rows else _COLUMNS),
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if isinstance(value, float) and math.isnan(value) else value)
                         for key, value in asdict(row).items()})
    return buffer.getvalue()


def write_outputs(rows: Sequence[ReportRow], out_dir: str | os.PathLike,
                  timings: Sequence["StepTime"] = (), images: "pd.DataFrame | None" = None) -> dict[str, Path]:
    """Write ``pipeline_report.{md,csv,json}`` (and the per-image table ``images``) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / f"{REPORT_NAME}.{kind}" for kind in ("md", "csv", "json")}
    if images is not None and len(images):
        paths["images"] = out_dir / IMAGES_NAME
        write_text_atomic(paths["images"], images.to_csv(index=False, float_format="%.4f"))
    markdown = format_markdown(rows)
    if timings:
        markdown += "\n\n" + format_timings_markdown(timings)
    write_text_atomic(paths["md"], markdown + "\n")
    write_text_atomic(paths["csv"], format_csv(rows))
    write_json_atomic(paths["json"], to_jsonable({"rows": [asdict(r) for r in rows],
                                                  "timings": [asdict(t) for t in timings]}))
    return paths


# --------------------------------------------------------------------------- timings


@dataclass(frozen=True)
class StepTime:
    """One finished step of ``make demo``: wall time, CPU time of its commands (None: unknown)."""

    step: str
    seconds: float
    cpu_seconds: float | None = None
    finished: str = ""


def read_step_times(steps_dir: str | os.PathLike) -> list[StepTime]:
    """The step records (``{"step", "seconds", "cpu_seconds", "finished"}`` JSON) in file-name order.

    Hidden files (``make demo`` marks a running step with ``.NAME.start``) are skipped.
    """
    steps_dir = Path(steps_dir)
    if not steps_dir.is_dir():
        return []
    times = []
    for file in sorted(p for p in steps_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            record = json.loads(file.read_text())
            cpu = record.get("cpu_seconds")
            times.append(StepTime(str(record.get("step", file.name)), float(record["seconds"]),
                                  None if cpu is None else float(cpu), str(record.get("finished", ""))))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise MedistillError(f"{file} is not a step record ({error!r}); delete it to rerun "
                                 "that step") from error
    return times


def _timing_cells(times: Sequence[StepTime]) -> list[list[str]]:
    """``[step, wall s, CPU s, finished]`` per step, then the totals."""
    rows = [[t.step, f"{t.seconds:.1f}", "-" if t.cpu_seconds is None else f"{t.cpu_seconds:.1f}", t.finished]
            for t in times]
    wall = sum(t.seconds for t in times)
    known = [t.cpu_seconds for t in times if t.cpu_seconds is not None]
    cpu = f"{sum(known):.1f}" if known and len(known) == len(times) else "-"
    rows.append(["total", f"{wall:.1f}", cpu, f"{wall / 60:.1f} min wall"])
    return rows


def format_timings(times: Sequence[StepTime]) -> str:
    """The steps' wall and CPU times for the terminal, with their totals."""
    rows = [["step", "wall s", "CPU s", "finished"], *_timing_cells(times)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip()
                     for row in rows)


def format_timings_markdown(times: Sequence[StepTime]) -> str:
    """The steps' wall and CPU times as a Markdown table."""
    lines = ["| step | wall s | CPU s | finished |", "| --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in _timing_cells(times)]
    return "\n".join(lines)
