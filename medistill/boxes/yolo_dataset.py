"""Write a segmentation set as an ultralytics YOLO detection set (``Creat_yolodata.py``).

Stage 1 of MedDistill; the released script's defects avoided here: docs/methods.md §1.

Layout written under ``out``::

    data.yaml                     train/val/test folders relative to this file, class names
    images/{train,val,test}/STEM.png
    labels/{train,val,test}/STEM.txt   one line "class xc yc w h" (normalised) per box;
                                       empty for an image without foreground
    yolodata.json                 settings, the stems of every split, the summary

* Samples come from the data layer (pairing by stem, NIfTI slices ``<stem>_z<index>``,
  validation with ``skip_bad``), so every STEM maps back to a data-layer sample.
* Boxes: :func:`medistill.boxes.components.mask_to_boxes` (one per 8-connected component,
  ``min_area``, ``one_box``; label value ``v`` is class ``v - 1``).
* Images are written as 8-bit PNG: an image whose values are already integers in
  0..255 is copied unchanged; anything else (16-bit, float, NIfTI slices) is min-max
  stretched per image to 0..255 (a constant image becomes black). Grey stays grey,
  RGB stays RGB.
* Splits: a folder in the data layer's layout with ``train/``, ``val/``, ``test/`` keeps
  its splits. Otherwise the samples are split by
  :func:`~medistill.boxes.yolo_splits.assign_splits`, by *group*, so that the slices
  of one volume never land in two splits: the slices of a NIfTI file form one group,
  and 2-D files whose stem matches ``group_pattern`` (by default ``<name>_z<digits>``,
  the data layer's slice naming, which exported volumes keep) are grouped by the
  pattern's first capture group.
* Pixels and label lines: :mod:`medistill.boxes.yolo_labels`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from medistill.boxes.components import class_names_for, mask_to_boxes
from medistill.boxes.yolo_labels import read_yolo_labels, to_uint8, yolo_label_lines
from medistill.boxes.yolo_splits import (
    DEFAULT_FRACTIONS,
    DEFAULT_GROUP_PATTERN,
    SPLITS,
    assign_splits,
    check_fractions,
    sample_group,
    split_counts,
)
from medistill.data import (
    Sample,
    find_splits,
    load_sample,
    pair_folder,
    validate_samples,
    write_image_png,
)
from medistill.data.mask_layout import class_names_of
from medistill.errors import DataError, DataProblem, MedistillError
from medistill.fileio import write_json_atomic, write_text_atomic

# The splits and the label files live in their own modules; their names are imported here
# too, so `from medistill.boxes.yolo_dataset import assign_splits` keeps working.
__all__ = [
    "DEFAULT_FRACTIONS", "DEFAULT_GROUP_PATTERN", "SPLITS", "YoloDataConfig", "YoloSetSummary",
    "assign_splits", "build_yolo_dataset", "check_fractions", "format_summary", "prepare_yolo_folder",
    "read_yolo_labels", "sample_group", "split_counts", "to_uint8", "warn_missing_splits",
    "write_data_yaml", "write_yolo_dataset", "yolo_label_lines",
]

log = logging.getLogger("medistill.boxes")


@dataclass
class YoloDataConfig:
    """Settings of one ``Creat_yolodata.py`` run (saved in ``yolodata.json``)."""

    out: str
    image_dir: str | None = None
    mask_dir: str | None = None
    data: str | None = None
    split: tuple[float, float, float] = DEFAULT_FRACTIONS
    seed: int = 0
    min_area: int = 1
    one_box: bool = False
    class_names: list[str] | None = None
    mask_suffix: str = ""
    mask_mode: str = "auto"
    mask_pattern: str | None = None
    group_pattern: str = DEFAULT_GROUP_PATTERN
    drop_empty_slices: bool = False
    skip_bad: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if (self.data is None) == (self.image_dir is None):
            raise MedistillError("give either --data DIR or --image_dir (with --mask_dir), not both")
        if self.image_dir is not None and self.mask_dir is None:
            raise MedistillError("--image_dir needs --mask_dir: boxes are made from the masks")
        if self.min_area < 1:
            raise MedistillError(f"--min-area is a pixel count of at least 1, got {self.min_area}")
        self.split = tuple(float(f) for f in self.split)  # type: ignore[assignment]
        check_fractions(self.split)
        if self.group_pattern:
            try:
                re.compile(self.group_pattern)
            except re.error as error:
                raise MedistillError(f"--group-pattern {self.group_pattern!r} is not a valid "
                                     f"regular expression ({error})") from error


@dataclass
class YoloSetSummary:
    """What was written: counts per split and the box sizes (pixels)."""

    images: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    empty: dict[str, int] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    boxes_per_class: list[int] = field(default_factory=list)
    box_sides: list[float] = field(default_factory=list)  # sqrt(w*h) in pixels
    box_fractions: list[float] = field(default_factory=list)  # side / longest image side

    def to_dict(self) -> dict:
        data = asdict(self)
        data["box_sides"] = _quantiles(self.box_sides)
        data["box_fractions"] = _quantiles(self.box_fractions)
        return data


# --------------------------------------------------------------------------- the whole set


def build_yolo_dataset(config: YoloDataConfig) -> YoloSetSummary:
    """Read, check, split and write the YOLO set of ``config``; return its summary."""
    out = Path(config.out)
    inputs = [Path(p) for p in (config.data, config.image_dir, config.mask_dir) if p]
    _refuse_overlap(out, inputs)
    splits = _read_splits(config)
    prepare_yolo_folder(out, config.overwrite)
    found_names = class_names_of([s.mask_parts for split in splits.values() for s in split])
    summary = write_yolo_dataset(splits, out, class_names=config.class_names or found_names or None,
                                 min_area=config.min_area, one_box=config.one_box,
                                 mask_mode=config.mask_mode)
    record = {"medistill": "yolodata", "settings": asdict(config), "summary": summary.to_dict(),
              "splits": {name: [s.stem for s in splits.get(name, [])] for name in SPLITS}}
    write_json_atomic(out / "yolodata.json", record)
    return summary


def _read_splits(config: YoloDataConfig) -> dict[str, list[Sample]]:
    if config.data is not None:
        layout = find_splits(config.data)
        named = {name: folders for name, folders in layout.items() if name != "all"}
        if named:
            if any(masks is None for _, masks in named.values()):
                raise DataError(f"{config.data}: every split needs a masks/ folder to make boxes")
            log.info("keeping the splits of %s: %s", config.data, ", ".join(named))
            return {name: _checked_samples(images, masks, config)
                    for name, (images, masks) in named.items()}
        images, masks = layout["all"]
        if masks is None:
            raise DataError(f"{config.data} has images/ but no masks/: boxes are made from masks")
    else:
        images, masks = Path(config.image_dir), Path(config.mask_dir)  # type: ignore[arg-type]
    samples = _checked_samples(images, masks, config)
    splits = assign_splits(samples, config.split, config.seed, config.group_pattern)
    warn_missing_splits(samples, splits, config.split, config.group_pattern)
    return splits


def warn_missing_splits(samples: list[Sample], splits: dict[str, list[Sample]],
                        fractions: tuple[float, float, float], group_pattern: str) -> list[str]:
    """Warn about a split asked for but left empty because there were too few groups.

    Names the grouping that caused it and ``--group-pattern``, the fix when the files
    are not slices of a few volumes. Returns the empty splits.
    """
    empty = [name for name, fraction in zip(SPLITS, fractions) if fraction > 0 and not splits[name]]
    if not empty:
        return []
    groups = {sample_group(sample, group_pattern) for sample in samples}
    shown = ", ".join(sorted(groups)[:3]) + (", ..." if len(groups) > 3 else "")
    log.warning(
        "the %s split is empty: the %d images form only %d group(s) (%s), and a group (the "
        "slices of one volume) never spans two splits. Files are grouped by --group-pattern "
        "%r (the first capture group of the file stem names the volume, e.g. case7 for "
        "case7_z012). If your files are not slices of a few volumes, pass --group-pattern '' "
        "(every file its own group), or a pattern whose first group names the volume in your "
        "file names", " and ".join(empty), len(samples), len(groups), shown, group_pattern)
    return empty


def _checked_samples(images: Path, masks: Path, config: YoloDataConfig) -> list[Sample]:
    problems: list[DataProblem] = []
    samples = pair_folder(images, masks, mask_suffix=config.mask_suffix,
                          keep_empty_slices=not config.drop_empty_slices,
                          mask_mode=config.mask_mode, problems=problems,
                          mask_pattern=config.mask_pattern)
    return validate_samples(samples, skip_bad=config.skip_bad, mask_mode=config.mask_mode,
                            problems=problems)


def _refuse_overlap(out: Path, inputs: list[Path]) -> None:
    target = out.resolve()
    for folder in inputs:
        source = folder.resolve()
        if target == source or target in source.parents:
            raise MedistillError(f"--out {out} holds the input folder {folder}: write the YOLO "
                                 "set to a folder of its own")


def prepare_yolo_folder(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``out``; a non-empty folder is refused unless ``overwrite``.

    With ``overwrite`` only what this module writes is removed first (the PNGs and
    label files of the split folders, ultralytics' label caches, ``data.yaml``,
    ``yolodata.json``); other files are left alone.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedistillError(f"{out} is a file, not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MedistillError(f"{out} is not empty: choose a new or empty folder, or pass "
                                 "--overwrite to replace the YOLO set in it")
        for split in SPLITS:
            for old in [*(out / "images" / split).glob("*.png"),
                        *(out / "labels" / split).glob("*.txt")]:
                old.unlink()
        for old in [*(out / "labels").glob("*.cache"), out / "data.yaml", out / "yolodata.json"]:
            if old.is_file():
                old.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedistillError(f"cannot create {out}: {error}") from error
    return out


def write_yolo_dataset(
    splits: dict[str, list[Sample]],
    out: str | os.PathLike,
    class_names: list[str] | None = None,
    min_area: int = 1,
    one_box: bool = False,
    mask_mode: str = "auto",
) -> YoloSetSummary:
    """Write images, label files and ``data.yaml`` for already split, validated samples."""
    out = Path(out)
    summary = YoloSetSummary()
    class_counts: dict[int, int] = {}
    total = sum(len(samples) for samples in splits.values())
    with tqdm(total=total, desc="writing YOLO set", unit="image") as bar:
        for split, samples in splits.items():
            if split not in SPLITS:
                raise MedistillError(f"unknown split {split!r}: use {', '.join(SPLITS)}")
            image_dir, label_dir = out / "images" / split, out / "labels" / split
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            summary.images[split] = summary.boxes[split] = summary.empty[split] = 0
            for sample in samples:
                image, mask = load_sample(sample, mask_mode)
                if mask is None:
                    raise DataError(f"{sample.describe()} has no mask: boxes are made from masks")
                height, width = mask.shape
                boxes = mask_to_boxes(mask, min_area=min_area, one_box=one_box)
                write_image_png(image_dir / f"{sample.stem}.png", to_uint8(image))
                lines = yolo_label_lines(boxes, width, height)
                (label_dir / f"{sample.stem}.txt").write_text("".join(f"{ln}\n" for ln in lines))
                summary.images[split] += 1
                summary.boxes[split] += len(boxes)
                summary.empty[split] += not boxes
                for box in boxes:
                    class_counts[box.class_id] = class_counts.get(box.class_id, 0) + 1
                    side = float(np.sqrt(box.area))
                    summary.box_sides.append(side)
                    summary.box_fractions.append(side / max(width, height))
                bar.update()
    num_classes = max(class_counts, default=0) + 1
    names = class_names_for(class_names, num_classes)
    summary.class_names = names
    summary.boxes_per_class = [class_counts.get(k, 0) for k in range(len(names))]
    if not class_counts:
        log.warning("no mask has any foreground: every label file is empty, a detector "
                    "cannot learn from this set")
    write_data_yaml(out, names, [s for s in SPLITS if summary.images.get(s)])
    return summary


def write_data_yaml(out: Path, class_names: list[str], splits: list[str]) -> Path:
    """``data.yaml`` with split folders relative to its own folder (no ``path`` key).

    ultralytics resolves the folders against the folder of ``data.yaml`` when ``path``
    is absent, so the set can be moved or copied as a whole. A missing val split
    points at train (with a warning): ultralytics needs a val split to train.
    """
    if "train" not in splits:
        raise MedistillError(f"no image went to the train split of {out}: add images or "
                             "change --split")
    entries = {split: f"images/{split}" for split in splits}
    if "val" not in entries:
        log.warning("the val split of %s is empty; validating on train (add images, raise "
                    "the val fraction, or check --group-pattern, for honest validation figures)", out)
        entries["val"] = "images/train"
    header = ("# YOLO detection set written by medistill (Creat_yolodata.py).\n"
              "# Folders are relative to this file; labels/ mirrors images/.\n")
    body = {**entries, "nc": len(class_names), "names": dict(enumerate(class_names))}
    path = out / "data.yaml"
    write_text_atomic(path, header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    return path


def format_summary(summary: YoloSetSummary) -> str:
    """A readable table of the summary (printed by ``Creat_yolodata.py``)."""
    lines = [f"{'split':<6} {'images':>7} {'boxes':>7} {'no box':>7}"]
    for split in SPLITS:
        if split in summary.images:
            lines.append(f"{split:<6} {summary.images[split]:>7} {summary.boxes[split]:>7} "
                         f"{summary.empty[split]:>7}")
    if len(summary.boxes_per_class) > 1:
        lines.append("boxes per class: " + ", ".join(
            f"{k} {name}: {count}" for k, (name, count)
            in enumerate(zip(summary.class_names, summary.boxes_per_class))))
    sides, fractions = _quantiles(summary.box_sides), _quantiles(summary.box_fractions)
    if sides:
        lines.append("box side sqrt(w*h), pixels: " + _format_quantiles(sides, "{:.1f}"))
        lines.append("box side / image side:      " + _format_quantiles(fractions, "{:.3f}"))
    return "\n".join(lines)


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    points = np.percentile(np.asarray(values), [0, 10, 50, 90, 100])
    return dict(zip(("min", "p10", "median", "p90", "max"), (float(p) for p in points)))


def _format_quantiles(quantiles: dict[str, float], pattern: str) -> str:
    return "  ".join(f"{name} {pattern.format(value)}" for name, value in quantiles.items())
