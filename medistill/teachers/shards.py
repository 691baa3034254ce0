"""Shards of a teacher cache: part ``I`` of ``N`` of a boxes file (nnU-Net's part-id/num-parts).

Shard ``I/N`` holds the entries ``I, I + N, I + 2N, …`` of the boxes file, so every shard
gets a similar mix of images whatever their order. Its cache is written next to the
cache it belongs to, as ``<stem>.shard-I-of-N<suffix>`` (``teacher.h5`` →
``teacher.shard-0-of-4.h5``), and is a complete teacher cache of those entries: it has
its own lock and resumes after a kill like any cache.

>>> shard = parse_shard("1/3")
>>> shard.select(list("abcdefg"))
['b', 'e']
>>> shard_path("runs/teacher.h5", shard).name
'teacher.shard-1-of-3.h5'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from medistill.errors import MedistillError

T = TypeVar("T")
_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (from 0) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise MedistillError(f"--shard {self.index}/{self.count}: the part must be 0 <= I < N with N >= 1, "
                                 "e.g. --shard 0/4 … --shard 3/4")

    @property
    def text(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, items: list[T]) -> list[T]:
        """The items of this shard, in their order."""
        return list(items[self.index::self.count])


def parse_shard(text: str) -> Shard:
    """``"I/N"`` → :class:`Shard`; a :class:`MedistillError` naming ``--shard`` otherwise."""
    match = _PATTERN.match(str(text))
    if not match:
        raise MedistillError(f"--shard {text!r}: expected I/N, e.g. 0/4 (part 0 of 4; SLURM_ARRAY_TASK_ID/N)")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_path(cache_path: str | os.PathLike, shard: Shard) -> Path:
    """Where shard ``shard`` of the cache ``cache_path`` is written."""
    path = Path(cache_path)
    suffix = path.suffix or ".h5"
    return path.with_name(f"{path.stem if path.suffix else path.name}.shard-{shard.index}-of-{shard.count}{suffix}")


def shard_paths(cache_path: str | os.PathLike, count: int) -> list[Path]:
    """The ``count`` shard caches of ``cache_path``, in part order."""
    return [shard_path(cache_path, Shard(index, count)) for index in range(count)]


def find_shard_count(cache_path: str | os.PathLike) -> int:
    """``N`` of the shard caches ``<stem>.shard-I-of-N`` next to ``cache_path`` (for ``--merge``)."""
    path = Path(cache_path)
    prefix, suffix = (path.stem if path.suffix else path.name), path.suffix or ".h5"
    pattern = re.compile(rf"^{re.escape(prefix)}\.shard-(\d+)-of-(\d+){re.escape(suffix)}$")
    counts = {int(m.group(2)) for p in path.parent.glob(f"{prefix}.shard-*") if (m := pattern.match(p.name))}
    if not counts:
        raise MedistillError(f"no shard caches of {path} found ({prefix}.shard-I-of-N{suffix} in {path.parent}); "
                             "build them with --shard I/N or --workers K first")
    if len(counts) > 1:
        raise MedistillError(f"shard caches of {path} for different N ({sorted(counts)}) are in {path.parent}; "
                             "keep one set (move the others away) and merge again")
    return counts.pop()
