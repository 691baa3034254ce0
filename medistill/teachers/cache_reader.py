"""Reading teacher caches: :class:`CacheReader` over one cache, a merged one, or a list of shards.

The layout is described in :mod:`medistill.teachers.cache`. A list of shard caches
(``medistill teach --shard I/N``) reads as one cache: every shard must come from the
same teacher, weights, precision, boxes file and quality settings, and each image is
in exactly one of them.

Example::

    with CacheReader("teacher.h5") as cache:             # or [shard0, shard1, ...]
        entry = cache.entry(cache.stems[0])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medistill.errors import MedistillError
from medistill.teachers.cache_lock import _read_holder, lock_path
from medistill.teachers.cache_storage import UNRECORDED_STORAGE, decode_features, decode_masks
from medistill.teachers.quality import QUALITY_FIELDS, MaskQuality, QualitySettings, arrays_to_records

FORMAT = "medistill.teacher_cache"
VERSION = 2


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)

def _format_problem(path: Path, attrs: Any) -> str | None:
    """Why the root attributes are not those of a current cache (None when they are)."""
    found = _text(attrs.get("format"))
    if found != FORMAT:
        return f"{path} is not a medistill teacher cache (format attribute {found!r})"
    version = _text(attrs.get("version"))
    if version != str(VERSION):
        return (f"{path} is a teacher cache of format version {version}, this medistill reads and writes "
                f"version {VERSION} (it adds per-mask quality records and image hashes, which need the teacher)")
    return None


@dataclass(frozen=True)
class CacheEntry:
    """One finished image of a teacher cache (arrays at the image's original size)."""

    stem: str
    file: str
    slice_index: int | None
    width: int
    height: int
    fused: np.ndarray                  # (H, W) float32 soft mask, max over the boxes
    image_uncertainty: float           # mean of the per-box uncertainties (0 without boxes)
    uncertainties: np.ndarray          # (N,) float32
    scores: np.ndarray | None          # (N,) float32 teacher IoU predictions, or None
    boxes: np.ndarray                  # (N, 4) float32 clipped xyxy, original pixels
    box_scores: np.ndarray             # (N,) float32 detector scores from the boxes file
    box_classes: np.ndarray            # (N,) int32
    features: np.ndarray | None        # (h, w, C) float16 (full) / float32 (compact), or None (or not read)
    feature_stride: int | None
    sha256: str

    @property
    def n_boxes(self) -> int:
        return len(self.boxes)


# Root attributes every shard of one cache shares (the shard attribute itself differs).
SHARED_ATTRIBUTES = ("teacher", "weights_hash", "precision", "preprocessing", "boxes_sha256", "quality", "storage")


def _open_cache(path: Path) -> h5py.File:
    """Open one cache file read-only and check its format and version."""
    if not path.is_file():
        raise MedistillError(f"the teacher cache {path} does not exist; build it with "
                             "`python -m medistill teach` (or a meddistill run)")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        holder = _read_holder(lock_path(path))[0]
        busy = f"; PID {holder} is still writing it (lock {lock_path(path)})" if holder else ""
        raise MedistillError(f"{path} cannot be opened as a teacher cache ({error}){busy}; "
                             "wait for the writer, or rebuild the cache") from error
    problem = _format_problem(path, handle.attrs)
    if problem:
        handle.close()
        raise MedistillError(f"{problem}: rebuild it with `python -m medistill teach --overwrite`"
                             if "version" in problem else problem)
    return handle


class CacheReader:
    """Read a teacher cache (the only code that knows the HDF5 layout besides the writer).

    ``with CacheReader(path) as cache:`` opens it read-only and checks its format and
    version; ``path`` may also be a list of shard caches (``teach --shard``), read as
    one cache. ``cache.stems`` lists the finished images; ``entry(stem)``, ``masks(stem)``
    and ``quality(stem)`` read one image, raising :class:`MedistillError` naming the file
    and the stem for a missing or unfinished entry.
    """

    def __init__(self, path: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
        if not paths:
            raise MedistillError("no teacher cache given (an empty list of shards)")
        self.path = paths[0] if len(paths) == 1 else paths[0].parent
        self.paths = paths
        self._handles: list[h5py.File] = []
        self._where: dict[str, h5py.File] = {}
        try:
            for one in paths:
                self._handles.append(_open_cache(one))
            self._index(paths)
        except BaseException:
            self.close()
            raise
        self._handle = self._handles[0]
        self.attrs = {key: _text(value) for key, value in self._handle.attrs.items()}

    def _index(self, paths: list[Path]) -> None:
        """Check that the shards belong together; map every image to the file holding it."""
        first = self._handles[0].attrs
        for path, handle in zip(paths, self._handles):
            differ = [key for key in SHARED_ATTRIBUTES if _text(handle.attrs.get(key)) != _text(first.get(key))]
            if differ:
                raise MedistillError(f"{path} and {paths[0]} are not shards of one cache (they differ in "
                                     f"{', '.join(differ)}); build every shard with the same command")
            for stem in handle["images"]:
                if stem in self._where and len(paths) > 1:
                    raise MedistillError(f"image {stem!r} is in two of the shards given ({path} and "
                                         f"{self._where[stem].filename}); give each shard once")
                self._where[stem] = handle

    def attrs_of(self, path: str | os.PathLike) -> dict[str, str | None]:
        """The root attributes of one of the files read (a shard)."""
        handle = self._handles[self.paths.index(Path(path))]
        return {key: _text(value) for key, value in handle.attrs.items()}

    def group_file(self, stem: str) -> h5py.File:
        """The open file that holds image ``stem`` (for merging shards)."""
        self._group(stem)
        return self._where[stem]

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles:
            handle.close()

    @property
    def teacher(self) -> str:
        return str(self.attrs.get("teacher"))

    @property
    def quality_settings(self) -> QualitySettings:
        return QualitySettings.from_json(self.attrs["quality"])

    @property
    def storage(self) -> str:
        """``"compact"`` or ``"full"`` (:mod:`~medistill.teachers.cache_storage`; caches older than the attribute are full)."""
        return str(self.attrs.get("storage") or UNRECORDED_STORAGE)

    @property
    def stems(self) -> list[str]:
        """The finished images, sorted."""
        return sorted(stem for stem, handle in self._where.items() if handle["images"][stem].attrs.get("done", False))

    def _group(self, stem: str) -> h5py.Group:
        handle = self._where.get(stem)
        group = None if handle is None else handle.get(f"images/{stem}")
        if group is None:
            raise MedistillError(f"{self.path}: no entry for image {stem!r}; the cache was made from another "
                                 "boxes file: rebuild it with the boxes file you use now")
        if not group.attrs.get("done", False):
            raise MedistillError(f"{self.path}: the entry of image {stem!r} is unfinished (a killed run); run "
                                 "`python -m medistill teach` with the same arguments to complete it")
        return group

    def entry(self, stem: str, features: bool = True) -> CacheEntry:
        """One image's :class:`CacheEntry` (``features=False`` skips reading the features)."""
        group = self._group(stem)
        attrs = group.attrs
        stride = int(attrs.get("feature_stride", -1))
        slice_index = int(attrs.get("slice", -1))
        return CacheEntry(
            stem=stem, file=_text(attrs["file"]), slice_index=None if slice_index < 0 else slice_index,
            width=int(attrs["width"]), height=int(attrs["height"]),
            fused=group["fused"][()].astype(np.float32), image_uncertainty=float(attrs["image_uncertainty"]),
            uncertainties=group["uncertainties"][()].astype(np.float32),
            scores=group["scores"][()].astype(np.float32) if "scores" in group else None,
            boxes=group["boxes"][()].astype(np.float32).reshape(-1, 4),
            box_scores=group["box_scores"][()].astype(np.float32),
            box_classes=group["box_classes"][()].astype(np.int32),
            features=decode_features(group) if features and "features" in group else None,
            feature_stride=stride if stride > 0 else None, sha256=_text(attrs["sha256"]))

    def feature_info(self, stem: str) -> tuple[tuple[int, int, int], int] | None:
        """``((h, w, C), stride)`` of an image's cached features without reading them; None if none."""
        group = self._group(stem)
        if "features" not in group:
            return None
        return tuple(int(v) for v in group["features"].shape), int(group.attrs["feature_stride"])

    def masks(self, stem: str, index: int | None = None) -> np.ndarray:
        """``(N, H, W)`` float32 per-box soft masks, or ``(H, W)`` for box ``index``."""
        data = self._group(stem)["masks"]
        return decode_masks(data[()] if index is None else data[int(index)])

    def quality(self, stem: str) -> list[MaskQuality]:
        """The per-mask quality records of one image, in box order."""
        group = self._group(stem)["quality"]
        return arrays_to_records({name: group[name][()] for name in QUALITY_FIELDS})

    def all_quality(self) -> dict[str, list[MaskQuality]]:
        """``{stem: records}`` for every finished image (empty lists for images without boxes)."""
        return {stem: self.quality(stem) for stem in self.stems}
