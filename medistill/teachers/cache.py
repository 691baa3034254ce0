"""The teacher cache: a teacher's outputs for every image of a boxes file, in one HDF5 file.

Layout (``format = "medistill.teacher_cache"``, ``version = 1``)::

    /                     attrs: format, version, teacher, weights_hash, preprocessing (JSON),
                                 boxes_file, boxes_sha256, class_names (JSON)
    /images/<stem>/       attrs: file, width, height, n_boxes, image_uncertainty,
                                 feature_stride (-1 without features), done
        fused             (H, W) float32, pixel-wise max over the boxes (zeros without boxes)
        masks             (N, H, W) float32 per-box probabilities, one chunk per box
        uncertainties     (N,) float32, variance of each soft mask over its pixels
        scores            (N,) float32 model scores (absent when the teacher has none)
        boxes             (N, 4) float32 clipped xyxy boxes, original pixels
        box_scores, box_classes   (N,) the boxes file's detector scores and classes
        features          (h, w, C) float16 encoder features (absent when none)

Arrays are chunked and gzip-compressed. The file is flushed after every image and an
image counts only once its ``done`` attribute is set, so a killed run resumes where it
stopped (unfinished groups are rewritten). A cache made by another teacher, other
weights or another boxes file is refused (:class:`MedistillError` saying what changed)
unless ``overwrite=True``, which rebuilds it. Images without boxes are stored with
``n_boxes = 0`` (MedDistill skips them at training time).

Example::

    build_cache(teacher, "data/images", "boxes.json", "teacher.h5")
    with h5py.File("teacher.h5") as f:
        soft = f["images/case7/fused"][()]
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medistill.errors import MedistillError
from medistill.fileio import file_sha256
from medistill.teachers.base import Teacher, TeacherOutput

LOG = logging.getLogger("medistill.teachers")
FORMAT = "medistill.teacher_cache"
VERSION = 1


def provenance(teacher: Teacher, boxes_path: str | os.PathLike, class_names: list[str]) -> dict[str, str]:
    """The root attributes that identify a cache."""
    return {"format": FORMAT, "version": str(VERSION), "teacher": teacher.name,
            "weights_hash": teacher.weights_hash,
            "preprocessing": json.dumps(teacher.preprocessing, sort_keys=True),
            "boxes_file": str(Path(boxes_path).resolve()), "boxes_sha256": file_sha256(boxes_path),
            "class_names": json.dumps(list(class_names))}


_CHECKED = ("format", "version", "teacher", "weights_hash", "preprocessing", "boxes_sha256")


def _stale_reasons(existing: dict[str, Any], wanted: dict[str, str]) -> list[str]:
    reasons = []
    for key in _CHECKED:
        old = existing.get(key)
        old = old.decode() if isinstance(old, bytes) else (None if old is None else str(old))
        if old != wanted[key]:
            reasons.append(f"{key}: cache has {old!r}, now {wanted[key]!r}")
    return reasons


def _read_image(image_dir: Path, entry) -> np.ndarray:
    from medistill.data.io import read_image, read_volume, volume_slice

    path = image_dir / entry.file
    if not path.exists():
        raise MedistillError(f"{path}: image of the boxes file entry {entry.stem!r} not found in "
                             f"{image_dir}; pass the --image_dir the boxes were made from")
    if entry.slice_index is not None:
        image = volume_slice(read_volume(path), entry.slice_index)
    else:
        image = read_image(path)
    image = np.asarray(image)
    if image.shape[:2] != (entry.height, entry.width):
        raise MedistillError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but the boxes file "
                             f"says {entry.width}x{entry.height}; regenerate the boxes file")
    return image


def _write_image(group: h5py.Group, entry, out: TeacherOutput) -> None:
    gzip = {"compression": "gzip", "compression_opts": 4}
    n, (height, width) = len(out.masks), out.masks.shape[1:]
    group.attrs.update({"file": entry.file, "width": entry.width, "height": entry.height, "n_boxes": n,
                        "image_uncertainty": out.image_uncertainty(),
                        "feature_stride": -1 if out.feature_stride is None else int(out.feature_stride)})
    group.create_dataset("fused", data=out.fused(), chunks=True, **gzip)
    group.create_dataset("masks", data=out.masks.astype(np.float32),
                         chunks=(1, height, width) if n else None, **(gzip if n else {}))
    group.create_dataset("uncertainties", data=out.uncertainties.astype(np.float32))
    group.create_dataset("boxes", data=out.boxes.astype(np.float32).reshape(-1, 4))
    group.create_dataset("box_scores", data=np.array([b.score for b in entry.boxes], np.float32))
    group.create_dataset("box_classes", data=np.array([b.class_id for b in entry.boxes], np.int32))
    if out.scores is not None:
        group.create_dataset("scores", data=np.asarray(out.scores, np.float32))
    if out.features is not None:
        group.create_dataset("features", data=out.features.astype(np.float16), chunks=True, **gzip)
    group.attrs["done"] = True


def _open(out_path: Path, wanted: dict[str, str], overwrite: bool) -> h5py.File:
    if out_path.exists() and overwrite:
        out_path.unlink()
    if out_path.exists():
        try:
            handle = h5py.File(out_path, "a")
        except OSError as error:
            raise MedistillError(f"{out_path}: the teacher cache cannot be opened ({error}); "
                                 "rerun with --overwrite to rebuild it") from error
        reasons = _stale_reasons(dict(handle.attrs), wanted)
        if reasons:
            handle.close()
            raise MedistillError(f"{out_path} was made with other settings ({'; '.join(reasons)}); "
                                 "use another --out, or --overwrite to rebuild it")
        return handle
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle = h5py.File(out_path, "w")
    handle.attrs.update(wanted)
    handle.create_group("images")
    handle.flush()
    return handle


def build_cache(teacher: Teacher, image_dir: str | os.PathLike, boxes_path: str | os.PathLike,
                out_path: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run ``teacher`` on every image of the boxes file; resume an unfinished cache.

    Returns a summary: ``{"images", "done_before", "written", "seconds", "images_per_second"}``.
    """
    from tqdm.auto import tqdm

    from medistill.boxes.boxes_file import read_boxes

    image_dir, out_path = Path(image_dir), Path(out_path)
    boxes = read_boxes(boxes_path)
    wanted = provenance(teacher, boxes_path, boxes.class_names)
    handle = _open(out_path, wanted, overwrite)
    written, start = 0, time.perf_counter()
    try:
        images = handle["images"]
        for stem in list(images):
            if not images[stem].attrs.get("done", False):
                del images[stem]  # a run killed while writing it
        todo = [entry for entry in boxes.images if entry.stem not in images]
        done_before = len(boxes.images) - len(todo)
        bar = tqdm(total=len(boxes.images), initial=done_before, desc=f"teach ({teacher.name})",
                   unit="image", disable=not progress)
        for entry in todo:
            image = _read_image(image_dir, entry)
            xyxy = np.array([b.xyxy for b in entry.boxes], np.float32).reshape(-1, 4)
            try:
                out = teacher.predict(image, xyxy)
            except MedistillError as error:
                raise MedistillError(f"{image_dir / entry.file}: {error}") from error
            _write_image(images.create_group(entry.stem), entry, out)
            handle.flush()
            written += 1
            bar.update(1)
            LOG.debug("teach: done %s (%d/%d)", entry.stem, done_before + written, len(boxes.images))
        bar.close()
    finally:
        handle.close()
    seconds = time.perf_counter() - start
    return {"images": len(boxes.images), "done_before": done_before, "written": written,
            "seconds": round(seconds, 3), "images_per_second": round(written / seconds, 3) if written else 0.0}
