"""Merging the shard caches of ``medistill teach --shard I/N`` into one teacher cache.

Every shard must be complete (each of its images finished) and come from the same
teacher, weights, precision, boxes file and quality settings; the merged file is written
under the target's lock into a temporary file and renamed into place, so it appears only
whole. The HDF5 groups are copied as they are (compressed chunks are not re-encoded).
The shard files are left where they are (delete them once the merged cache is in use).

Example::

    merge_shards("runs/teacher.h5", 4, "boxes.json")   # teacher.shard-{0..3}-of-4.h5 → teacher.h5
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import h5py

from medistill.boxes.boxes_file import read_boxes
from medistill.errors import MedistillError
from medistill.fileio import atomic_path, file_sha256
from medistill.teachers.cache_lock import cache_lock
from medistill.teachers.cache_reader import CacheReader, _text
from medistill.teachers.shards import Shard, shard_paths


def _check_complete(reader: CacheReader, paths: list[Path], boxes_path: str | os.PathLike) -> list[str]:
    """Every image of the boxes file finished in its shard; the stems in boxes-file order."""
    boxes = read_boxes(boxes_path)
    if _text(reader.attrs.get("boxes_sha256")) != file_sha256(boxes_path):
        raise MedistillError(f"the shards in {paths[0].parent} were made from another boxes file than "
                             f"{boxes_path}; merge with the --boxes they were built from")
    finished = set(reader.stems)
    for index, path in enumerate(paths):
        wanted = Shard(index, len(paths)).select(boxes.images)
        missing = [entry.stem for entry in wanted if entry.stem not in finished]
        if _text(reader.attrs_of(path).get("shard")) != Shard(index, len(paths)).text:
            raise MedistillError(f"{path} is not shard {index}/{len(paths)} (its shard attribute is "
                                 f"{_text(reader.attrs_of(path).get('shard'))!r}); rebuild it")
        if missing:
            raise MedistillError(f"{path}: {len(missing)} of its {len(wanted)} image(s) are not finished "
                                 f"(first: {missing[0]!r}); run its `medistill teach --shard {index}/{len(paths)}` "
                                 "again to complete it, then merge")
    return [entry.stem for entry in boxes.images]


def merge_shards(out_path: str | os.PathLike, count: int, boxes_path: str | os.PathLike,
                 overwrite: bool = False) -> dict[str, Any]:
    """Merge the ``count`` shard caches of ``out_path`` into ``out_path``; a summary dict."""
    out_path, start = Path(out_path), time.perf_counter()
    paths = shard_paths(out_path, count)
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise MedistillError(f"cannot merge: shard cache(s) {', '.join(absent)} do not exist; build them with "
                             f"`medistill teach --shard I/{count} --out {out_path}` (or --workers {count})")
    with cache_lock(out_path), CacheReader(paths) as reader:
        if out_path.exists():  # looked at under the lock: another writer may have made it meanwhile
            from medistill.teachers.cache import check_replaceable

            if not overwrite:
                raise MedistillError(f"{out_path} exists; use --overwrite to replace it with the merged shards "
                                     "(only a teacher cache is replaced), or another --out")
            check_replaceable(out_path)  # refuses anything that is not a teacher cache
        stems = _check_complete(reader, paths, boxes_path)
        # The old cache (--overwrite) stays until the merged file replaces it whole.
        with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as merged:
            merged.attrs.update({key: value for key, value in reader.attrs.items() if value is not None})
            merged.attrs["shard"] = ""
            images = merged.create_group("images")
            for stem in stems:
                source = reader.group_file(stem)
                source.copy(source[f"images/{stem}"], images, name=stem)
    return {"out": str(out_path), "shards": [str(p) for p in paths], "images": len(stems),
            "seconds": round(time.perf_counter() - start, 3)}
