"""The teacher cache: a teacher's outputs for every image of a boxes file, in one HDF5 file.

Layout (``format = "medistill.teacher_cache"``, ``version = 2``)::

    /                     attrs: format, version, teacher, weights_hash, precision, backend,
                                 preprocessing (JSON),
                                 boxes_file, boxes_sha256, class_names (JSON),
                                 quality (JSON: jitter, draws, seed, threshold),
                                 storage ("compact" or "full": :mod:`~medistill.teachers.cache_storage`)
    /images/<stem>/       attrs: file, slice (-1 for a plain image), width, height, n_boxes,
                                 image_uncertainty, feature_stride (-1 without features),
                                 feature_pool (1, or 2 for pooled compact features),
                                 sha256 (of the image file; of the decoded slice for NIfTI), done
        fused             (H, W) pixel-wise max over the boxes (zeros without boxes); float32
                          (full) or float16 (compact)
        masks             (N, H, W) per-box probabilities, one chunk per box; float32 (full)
                          or uint8 = round(255 p) (compact)
        uncertainties     (N,) float32, variance of each soft mask over its pixels
        scores            (N,) float32 model scores (absent when the teacher has none)
        boxes             (N, 4) float32 clipped xyxy boxes, original pixels
        box_scores, box_classes   (N,) the boxes file's detector scores and classes
        features          (h, w, C) encoder features (absent when none): float16 (full), or
                          2x2-pooled and 8-bit per channel with features_low/features_high (C,)
                          float32 (compact)
        quality/          score, stability, fill (N,) float32; components (N,) int32; area (N,) int64
                          (:mod:`medistill.teachers.quality`; score NaN without teacher scores)

Arrays are chunked and gzip-compressed. The file is flushed after every image and an
image counts only once its ``done`` attribute is set, so a killed run resumes where it
stopped (unfinished groups are rewritten). A cache made by another teacher, other
weights, another boxes file or other quality settings is refused (:class:`MedistillError`
saying what changed) unless ``overwrite=True``, which rebuilds it; so is a cache of an
older format version (rebuild it: the quality records need the teacher). Reusing a cache
checks every finished image's hash against the images now in ``image_dir`` and refuses
on the first difference (a cache reused with another ``--image_dir``).

One writer at a time: :func:`build_cache` holds ``<cache>.lock`` (created with
``O_EXCL``, holding ``pid host``) while it writes; a second writer is refused naming the
holder's PID; a lock left by a dead process on this host is taken over (logged).
``overwrite=True`` deletes only a file that is a medistill teacher cache.

Other modules read a cache only through :class:`CacheReader`::

    build_cache(teacher, "data/images", "boxes.json", "teacher.h5")
    with CacheReader("teacher.h5") as cache:
        for stem in cache.stems:
            entry = cache.entry(stem)          # CacheEntry: fused, boxes, features, ...
            records = cache.quality(stem)      # list[MaskQuality], one per box
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medistill.boxes.boxes_file import check_image_paths, image_path, read_boxes
from medistill.errors import MedistillError
from medistill.fileio import file_sha256
from medistill.teachers.base import Teacher, TeacherOutput
from medistill.teachers.cache_lock import cache_lock, lock_path
from medistill.teachers.cache_storage import (DEFAULT_STORAGE, UNRECORDED_STORAGE, check_storage, encode_features,
                                              encode_fused, encode_masks, serves)
from medistill.teachers.cache_reader import FORMAT, VERSION, CacheEntry, CacheReader, _format_problem, _text
from medistill.teachers.pipeline import run_pipeline
from medistill.teachers.quality import (MaskQuality, QualitySettings, jitter_boxes, mask_quality,
                                        records_to_arrays, stability, stem_seed)
from medistill.teachers.shards import Shard

__all__ = ["CacheEntry", "CacheReader", "build_cache", "cache_lock", "lock_path", "provenance",
           "quality_records", "slice_sha256"]

LOG = logging.getLogger("medistill.teachers")


def provenance(teacher: Teacher, boxes_path: str | os.PathLike, class_names: list[str],
               quality: QualitySettings | None = None, shard: Shard | None = None,
               storage: str = DEFAULT_STORAGE) -> dict[str, str]:
    """The root attributes that identify a cache (``shard``: which part of the boxes file it holds)."""
    quality = quality or QualitySettings()
    return {"format": FORMAT, "version": str(VERSION), "teacher": teacher.name,
            "weights_hash": teacher.weights_hash, "precision": teacher.precision, "backend": teacher.backend,
            "preprocessing": json.dumps(teacher.preprocessing, sort_keys=True),
            "boxes_file": str(Path(boxes_path).resolve()), "boxes_sha256": file_sha256(boxes_path),
            "class_names": json.dumps(list(class_names)), "quality": quality.to_json(),
            "shard": shard.text if shard else "", "storage": check_storage(storage)}


# "backend" is recorded, not checked: every fp32 backend passed parity with Keras, so a
# cache may be resumed with another one. A cache older than the precision attribute is fp32.
_CHECKED = ("teacher", "weights_hash", "precision", "preprocessing", "boxes_sha256", "quality", "shard", "storage")
_MISSING_MEANS = {"precision": "fp32", "shard": "", "storage": UNRECORDED_STORAGE}


def _stale_reasons(existing: dict[str, Any], wanted: dict[str, str]) -> list[str]:
    reasons = []
    for key in _CHECKED:
        old = _text(existing.get(key, _MISSING_MEANS.get(key)))
        if key == "storage" and serves(old, wanted[key]):
            continue
        if old != wanted[key]:
            reasons.append(f"{key}: cache has {old!r}, now {wanted[key]!r}")
    return reasons


# --------------------------------------------------------------------------- images


def slice_sha256(image: np.ndarray) -> str:
    """SHA-256 of a decoded image (dtype, shape and bytes): the hash of a NIfTI slice.

    >>> slice_sha256(np.zeros((2, 2))) == slice_sha256(np.zeros((2, 2)))
    True
    """
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _read_image(image_dir: Path, entry) -> tuple[np.ndarray, str]:
    """The image of a boxes-file entry and its content hash."""
    from medistill.data.io import read_image, read_volume, volume_slice

    path = image_path(image_dir, entry)  # symbolic links resolved, inside image_dir
    if not path.exists():
        raise MedistillError(f"{path}: image of the boxes file entry {entry.stem!r} not found in "
                             f"{image_dir}; pass the --image_dir the boxes were made from")
    if entry.slice_index is not None:
        image = np.asarray(volume_slice(read_volume(path), entry.slice_index))
        digest = slice_sha256(image)
    else:
        image = np.asarray(read_image(path))
        digest = file_sha256(path)
    if image.shape[:2] != (entry.height, entry.width):
        raise MedistillError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but the boxes file "
                             f"says {entry.width}x{entry.height}; regenerate the boxes file")
    return image, digest


def _check_entries(image_dir: Path, entries: list) -> None:
    """Every image exists, and each 2-D image has the size its entry says: checked before anything
    is written, so a bad entry never leaves a half-built cache behind. Slices of volumes are
    checked when read (reading every volume twice would cost too much)."""
    from PIL import Image, UnidentifiedImageError

    problems = []
    for entry in entries:
        path = image_path(image_dir, entry)
        if not path.exists():
            problems.append(f"{path}: image of the boxes file entry {entry.stem!r} not found")
            continue
        if entry.slice_index is not None:
            continue
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError):
            continue  # .npy and other formats PIL cannot open lazily: checked when read
        if (height, width) != (entry.height, entry.width):
            problems.append(f"{path}: image is {width}x{height} but the boxes file says "
                            f"{entry.width}x{entry.height}")
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise MedistillError(f"the boxes file does not match the images in {image_dir} (nothing was written):\n  "
                             f"{shown}\npass the --image_dir the boxes were made from, or regenerate the boxes file")


def _image_hash(image_dir: Path, entry) -> str:
    if entry.slice_index is None:
        path = image_path(image_dir, entry)
        if not path.exists():
            raise MedistillError(f"{path}: image of the boxes file entry {entry.stem!r} not found in "
                                 f"{image_dir}; pass the --image_dir the cache was made from")
        return file_sha256(path)
    return _read_image(image_dir, entry)[1]


def _check_hashes(out_path: Path, images: h5py.Group, entries: list, image_dir: Path) -> None:
    """Refuse when a finished image's hash differs from the file now in ``image_dir``."""
    for entry in entries:
        if entry.stem not in images:
            continue
        cached = _text(images[entry.stem].attrs.get("sha256"))
        now = _image_hash(image_dir, entry)
        if cached != now:
            raise MedistillError(
                f"{out_path}: the image {image_dir / entry.file} (stem {entry.stem!r}) is not the one the cache "
                f"was made from (sha256 {now[:12]}…, cached {str(cached)[:12]}…); was the cache made from another "
                "--image_dir? Pass that folder, use another --out, or --overwrite to rebuild the cache")


def _finished(out_path: Path, wanted: dict[str, str], entries: list, image_dir: Path) -> bool:
    """Whether ``out_path`` already holds every entry, finished, with these settings and images.

    Read-only; False (so the locked writer path decides and explains) when the file is
    missing, locked, busy, stale or incomplete. A changed image still raises (:func:`_check_hashes`).
    """
    if not out_path.is_file() or lock_path(out_path).exists():
        return False  # a writer (or a stale lock) is there: the locked path refuses or takes over
    try:
        handle = h5py.File(out_path, "r")
    except OSError:
        return False  # being written, or not HDF5: the writer path says which
    with handle:
        if _format_problem(out_path, handle.attrs) or _stale_reasons(dict(handle.attrs), wanted):
            return False
        images = handle.get("images")
        if images is None or any(e.stem not in images or not images[e.stem].attrs.get("done", False)
                                 for e in entries):
            return False
        _check_hashes(out_path, images, entries, image_dir)
    return True


# --------------------------------------------------------------------------- writing


def quality_records(teacher: Teacher, image: np.ndarray, out: TeacherOutput, stem: str,
                    settings: QualitySettings) -> list[MaskQuality]:
    """The :class:`MaskQuality` of each mask of ``out`` (``teacher.predict(image, …)``).

    Stability masks come from one :meth:`Teacher.predict_more` call with all the
    jittered boxes (``settings.draws`` per box, drawn from ``stem_seed(stem, seed)``).
    """
    n = len(out.masks)
    stabilities = None
    if n and settings.draws > 0:
        height, width = out.masks.shape[1:]
        rng = np.random.default_rng(stem_seed(stem, settings.seed))
        jittered = jitter_boxes(out.boxes, settings.jitter, settings.draws, rng, height, width)
        more = teacher.predict_more(image, jittered.reshape(-1, 4), out)
        stabilities = stability(out.masks, more.masks.reshape((settings.draws,) + out.masks.shape),
                                settings.threshold)
    return mask_quality(out.masks, out.boxes, out.scores, stabilities, settings.threshold)


def _write_image(group: h5py.Group, entry, out: TeacherOutput, digest: str,
                 records: list[MaskQuality], storage: str) -> None:
    gzip = {"compression": "gzip", "compression_opts": 4}
    n, (height, width) = len(out.masks), out.masks.shape[1:]
    group.attrs.update({"file": entry.file, "slice": -1 if entry.slice_index is None else int(entry.slice_index),
                        "width": entry.width, "height": entry.height, "n_boxes": n,
                        "image_uncertainty": out.image_uncertainty(), "sha256": digest,
                        "feature_stride": -1 if out.feature_stride is None else int(out.feature_stride)})
    group.create_dataset("fused", data=encode_fused(out.fused(), storage), chunks=True, **gzip)
    group.create_dataset("masks", data=encode_masks(out.masks, storage),
                         chunks=(1, height, width) if n else None, **(gzip if n else {}))
    group.create_dataset("uncertainties", data=out.uncertainties.astype(np.float32))
    group.create_dataset("boxes", data=out.boxes.astype(np.float32).reshape(-1, 4))
    group.create_dataset("box_scores", data=np.array([b.score for b in entry.boxes], np.float32))
    group.create_dataset("box_classes", data=np.array([b.class_id for b in entry.boxes], np.int32))
    if out.scores is not None:
        group.create_dataset("scores", data=np.asarray(out.scores, np.float32))
    if out.features is not None:
        stored = encode_features(out.features, storage)
        group.attrs["feature_pool"] = stored.pop("feature_pool")
        for name, values in stored.items():
            group.create_dataset(name, data=values, **(dict(chunks=True, **gzip) if values.ndim == 3 else {}))
    quality = group.create_group("quality")
    for name, values in records_to_arrays(records).items():
        quality.create_dataset(name, data=values)
    group.attrs["done"] = True


def _open_hdf5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as error:
        raise MedistillError(f"{path} cannot be opened as an HDF5 teacher cache ({error}); if it is a damaged "
                             "cache, delete it and run again, or use another --out") from error


def _remove_cache(out_path: Path) -> None:
    """Delete ``out_path`` only when it is a medistill teacher cache (``overwrite``)."""
    check_replaceable(out_path)
    out_path.unlink()


def check_replaceable(out_path: Path) -> None:
    """Raise unless ``out_path`` is a medistill teacher cache (the only thing ``--overwrite`` replaces)."""
    if not out_path.is_file():
        raise MedistillError(f"{out_path} is not a file; refusing to overwrite it, choose another --out")
    with _open_hdf5(out_path, "r") as handle:
        found = _text(handle.attrs.get("format"))
    if found != FORMAT:
        raise MedistillError(f"{out_path} is not a medistill teacher cache (format attribute {found!r}); "
                             "--overwrite only replaces teacher caches, so it was left alone: choose another --out")


def _open(out_path: Path, wanted: dict[str, str], overwrite: bool) -> h5py.File:
    if out_path.exists() and overwrite:
        _remove_cache(out_path)
    if out_path.exists():
        handle = _open_hdf5(out_path, "a")
        problem = _format_problem(out_path, handle.attrs)
        reasons = [] if problem else _stale_reasons(dict(handle.attrs), wanted)
        if problem or reasons:
            handle.close()
            if problem and "not a medistill" in problem:
                raise MedistillError(f"{problem}; choose another --out")
            if problem:
                raise MedistillError(f"{problem}: rebuild it with --overwrite, or use another --out")
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
                out_path: str | os.PathLike, overwrite: bool = False, progress: bool = True,
                quality: QualitySettings | None = None, shard: Shard | None = None,
                on_progress: Callable[[int, int], None] | None = None,
                storage: str = DEFAULT_STORAGE) -> dict[str, Any]:
    """Run ``teacher`` on every image of the boxes file (or of its ``shard``); resume an unfinished cache.

    ``quality`` sets the stability jitter (default 0.05 of the box size, 3 draws). The
    images are read and preprocessed ahead on a thread, go through the teacher in
    batches of ``teacher.encode_batch`` and are written on another thread
    (:mod:`medistill.teachers.pipeline`). ``storage`` is ``"compact"`` (default) or ``"full"``
    (:mod:`medistill.teachers.cache_storage`); a full cache is reused, and completed in its own
    storage, where compact is asked. ``on_progress(done, total)`` is called before the
    first image and after each one (progress of worker processes). Returns a summary:
    ``{"images", "done_before", "written", "seconds", "images_per_second"}``.
    """
    image_dir, out_path = Path(image_dir), Path(out_path)
    quality = quality or QualitySettings()
    boxes = read_boxes(boxes_path)
    check_image_paths(boxes, image_dir)  # before anything is written
    entries = shard.select(boxes.images) if shard else list(boxes.images)
    _check_entries(image_dir, entries)
    wanted = provenance(teacher, boxes_path, boxes.class_names, quality, shard, storage)
    start = time.perf_counter()
    if not overwrite and _finished(out_path, wanted, entries, image_dir):
        # Read-only: several runs may share a finished cache at the same time.
        return {"images": len(entries), "done_before": len(entries), "written": 0,
                "seconds": round(time.perf_counter() - start, 3), "images_per_second": 0.0}
    with cache_lock(out_path):
        handle = _open(out_path, wanted, overwrite)
        try:
            images = handle["images"]
            for stem in list(images):
                if not images[stem].attrs.get("done", False):
                    del images[stem]  # a run killed while writing it
            _check_hashes(out_path, images, entries, image_dir)
            todo = [entry for entry in entries if entry.stem not in images]
            done_before = len(entries) - len(todo)
            written = _run_teacher(teacher, image_dir, todo, quality, handle, progress, done_before,
                                   len(entries), on_progress)
        finally:
            handle.close()
    seconds = time.perf_counter() - start
    return {"images": len(entries), "done_before": done_before, "written": written,
            "seconds": round(seconds, 3), "images_per_second": round(written / seconds, 3) if written else 0.0}


def _run_teacher(teacher: Teacher, image_dir: Path, todo: list, quality: QualitySettings, handle: h5py.File,
                 progress: bool, done_before: int, total: int,
                 on_progress: Callable[[int, int], None] | None) -> int:
    """Teach every entry of ``todo`` into the open cache; the number written."""
    from tqdm.auto import tqdm

    def read(entry):
        image, digest = _read_image(image_dir, entry)
        xyxy = np.array([b.xyxy for b in entry.boxes], np.float32).reshape(-1, 4)
        try:
            return entry, image, digest, teacher.prepare(image, xyxy)
        except MedistillError as error:
            raise MedistillError(f"{image_dir / entry.file}: {error}") from error

    def compute(batch):
        outs = teacher.predict_prepared([prepared for *_, prepared in batch])
        results = []
        for (entry, image, digest, _), out in zip(batch, outs):
            try:
                records = quality_records(teacher, image, out, entry.stem, quality)
            except MedistillError as error:
                raise MedistillError(f"{image_dir / entry.file}: {error}") from error
            results.append((entry, out, digest, records))
        return results

    # The ETA covers the whole set: tqdm's rate counts only the images written in this run.
    bar = tqdm(total=total, initial=done_before, desc=f"teach ({teacher.name})", unit="image",
               disable=not progress, smoothing=0.1)

    done = [done_before]  # not bar.n: a disabled bar does not count

    storage = _text(handle.attrs.get("storage", _MISSING_MEANS["storage"]))  # the file's own, when resumed

    def write(result):
        entry, out, digest, records = result
        _write_image(handle["images"].create_group(entry.stem), entry, out, digest, records, storage)
        handle.flush()
        bar.update(1)
        done[0] += 1
        if on_progress:
            on_progress(done[0], total)
        LOG.debug("teach: done %s (%d/%d)", entry.stem, done[0], total)

    if on_progress:
        on_progress(done_before, total)
    try:
        return run_pipeline(todo, read, compute, write, batch=teacher.encode_batch)
    finally:
        bar.close()
