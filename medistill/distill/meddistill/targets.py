"""The teacher's targets of a MedDistill run: the teacher cache (built or completed on the
chief, read by every worker) or, with ``--live-teacher``, the teacher called at each step.

Example::

    prepared = prepare_data(config, session, grid_for=lambda info: 16)
    prepared.train.soft.shape          # (N, S, S) the teacher's soft masks in the student frame
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medistill.distill.meddistill import data as md
from medistill.distill.meddistill.config import MedDistillConfig
from medistill.distribute import barrier
from medistill.errors import MedistillError
from medistill.train.session import RunSession

log = logging.getLogger("medistill.distill")


def prepare_cache(config: MedDistillConfig, session: RunSession, teacher: Any = None) -> dict:
    """Build or complete the teacher cache on the chief; other workers wait, then read it.

    ``teacher`` is the teacher if already built (co-learn builds it first). A worker that
    cannot see the chief's file (another machine without a shared disk) builds its own copy.
    """
    from medistill.teachers.cache import build_cache
    from medistill.teachers.registry import build_teacher

    def the_teacher():  # built only where a cache is written, run as config.json records
        return teacher or build_teacher(config.teacher, config.runtime())

    path = config.cache_path()
    summary: dict = {}
    if session.chief:
        summary = build_cache(the_teacher(), config.image_dir, config.boxes, path, storage=config.cache_storage())
    barrier(session.strategy)
    if not session.chief and not path.exists():
        summary = build_cache(the_teacher(), config.image_dir, config.boxes, path, progress=False,
                              storage=config.cache_storage())
    log.info("teacher cache %s: %s", path, summary or "built by the chief")
    return summary


@dataclass
class Prepared:
    """The data of a run and what was learned about the teacher's features."""

    train: md.DistillData
    val: md.DistillData | None
    features: md.FeatureInfo | None
    live: Any = None        # the live-teacher callable (live-teacher mode)
    cache: dict | None = None
    source: dict = field(default_factory=dict)  # the boxes file's provenance record


def _feature_info_live(teacher, train_entries, image_dir) -> md.FeatureInfo | None:
    probe = train_entries[0]
    boxes = md.entry_xyxy(probe)
    out = teacher.predict(md.read_entry_image(probe, image_dir), boxes)
    if out.features is None:
        return None
    return md.FeatureInfo(tuple(int(v) for v in out.features.shape), int(out.feature_stride))


def _entries(config: MedDistillConfig):
    """Training and validation entries of the boxes file, and its ``source`` record."""
    from medistill.boxes.boxes_file import read_boxes

    boxes = read_boxes(config.boxes)
    train, val = md.split_entries(boxes, config.image_dir, config.val_fraction, config.seed)
    if config.skip_empty:
        dropped = len(train)
        train = md.drop_empty(train)
        log.info("--skip-empty: %d training image(s) without a box dropped", dropped - len(train))
    return train, val, dict(boxes.source)


class LiveTeacher:
    """Live-teacher mode: ``live(i)`` calls the teacher on training image ``i`` (counts the calls)."""

    def __init__(self, teacher, data: md.DistillData, size: int, grid: int | None) -> None:
        self.teacher, self.data, self.size, self.grid = teacher, data, size, grid
        self.calls = 0

    def __call__(self, index: int):
        self.calls += 1
        return md.live_targets(self.teacher, self.data, index, self.size, self.grid)


def tighten_projection_boxes(config: MedDistillConfig, source: dict) -> bool:
    """Whether the projection term's boxes are tightened (``--tight-boxes``): not for boxes made
    from masks, which are tight by construction (the teacher's mask could only shrink them)."""
    if not (config.tight_boxes and "proj" in config.terms):
        return False
    if source.get("kind") == "masks":
        log.info("--tight-boxes: the boxes were made from masks and are tight already; the projection term uses them")
        return False
    if config.live_teacher:
        log.warning("--tight-boxes needs the teacher's per-box masks of a cache; with --live-teacher the projection "
                    "term uses the boxes as given")
        return False
    return True


def log_tightened(data: md.DistillData) -> None:
    """Say how much the projection term's boxes shrank (areas in the student frame)."""
    given = (data.box_rows.sum(-1) * data.box_cols.sum(-1)).astype(np.float64)
    tight = (data.proj_rows.sum(-1) * data.proj_cols.sum(-1)).astype(np.float64)
    real = given > 0
    if real.any():
        ratio = tight[real] / given[real]
        log.info("--tight-boxes: %d box(es) tightened to the teacher's masks for the projection term, median area "
                 "%.2f of the given box (%d unchanged)", int(real.sum()), float(np.median(ratio)),
                 int(np.sum(ratio == 1.0)))


def prepare_data(config: MedDistillConfig, session: RunSession, grid_for, teacher: Any = None) -> Prepared:
    """Read the split's images and targets; ``grid_for(info)`` gives the student feature grid."""
    train_entries, val_entries, source = _entries(config)
    pre = config.preprocess()
    tighten = tighten_projection_boxes(config, source)
    if config.live_teacher:
        from medistill.teachers.registry import build_teacher

        teacher = build_teacher(config.teacher, config.runtime())
        info = _feature_info_live(teacher, train_entries, config.image_dir)
        grid = grid_for(info)
        train = md.load_live(teacher, config.image_dir, train_entries, pre, grid=grid, call_teacher=False)
        val = (md.load_live(teacher, config.image_dir, val_entries, pre, grid=None, call_teacher=True,
                            desc="teacher on validation images") if val_entries else None)
        return Prepared(train, val, info, live=LiveTeacher(teacher, train, pre.size, grid), source=source)
    cache = prepare_cache(config, session, teacher)
    path = config.cache_path()
    info = md.cache_feature_info(path, [e.stem for e in train_entries + val_entries])
    if config.co_learn and (info is None or info.channels != 256):
        raise MedistillError(f"{path}: --co-learn needs LiteMedSAM's cached (64, 64, 256) embeddings, the cache "
                             f"has {'no features' if info is None else info.shape}; build it with --teacher litemedsam")
    grid = grid_for(info)
    train = md.load_from_cache(path, config.image_dir, train_entries, pre, grid=grid, co_learn=config.co_learn,
                               tighten=tighten)
    if tighten:
        log_tightened(train)
    val = (md.load_from_cache(path, config.image_dir, val_entries, pre, grid=None, desc="validation images")
           if val_entries else None)
    return Prepared(train, val, info, cache=cache, source=source)
