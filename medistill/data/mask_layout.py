"""Several mask files per image (one per structure), named by a pattern and merged by one rule.

Public sets often store one binary mask per structure instead of one label map per image:
``<stem>_<structure>_<k>.png`` (SAM-Med2D), or one folder per class (``liver/<stem>.png``).
A *mask pattern* says where the masks of an image are, relative to the mask folder:

* ``{stem}`` is the image's stem (required, once, at the start of a path part or after
  fixed text: ``{stem}_*.png``, ``mask_{stem}.png``, ``{class}/{stem}.png``);
* ``{class}`` (optional, once) is the structure's name; it may contain ``_``;
* ``*`` is any text within one path part (an instance number, an extension), ``?`` one
  character.

The merge rule (:func:`merge_mask_parts`): every matched file is read as a binary mask
(:func:`medistill.data.io.read_mask` with ``mode="binary"``: foreground > 0 for small
values, > half the range otherwise). Without ``{class}`` all matched files of an image
are one structure: their union is a binary mask (label 1). With ``{class}`` the class
names found in the whole mask folder, sorted alphabetically, become labels 1..K (the
same numbering for every image); files of one class are united; where two classes
overlap, the later name in that order (the higher label) wins. An image without any
matching file has no mask (an error, as for a missing mask file).

>>> pattern = MaskPattern("{stem}_{class}_*.png")
>>> pattern.match("case1_z003_left_kidney_0.png", {"case1", "case1_z003"})
('case1_z003', 'left_kidney')
>>> MaskPattern("{class}/{stem}.*").match("liver/case1.png", {"case1"})
('case1', 'liver')
>>> MaskPattern("{stem}_*.png").match("other_0.png", {"case1"}) is None
True
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medistill.data.io import UnreadableFileError, file_extension, read_mask
from medistill.errors import DataError, DataProblem

PATTERN_HELP = ("where the masks of an image are when each image has several mask files (one per "
                "structure), relative to the mask folder: {stem} is the image stem, {class} the "
                "structure name, * any text, e.g. '{stem}_*.png' (union of all), '{stem}_{class}_*.png' "
                "(SAM-Med2D: one label per structure) or '{class}/{stem}.png' (one folder per class). "
                "Each file is read as binary; classes are numbered 1..K in alphabetical order, the later "
                "one wins where they overlap (README: Several masks per image)")


@dataclass(frozen=True)
class MaskPart:
    """One mask file of an image: its path, the label it gets, and its class name ('' without {class})."""

    path: Path
    label: int
    name: str = ""


class MaskPattern:
    """A checked mask pattern (module docstring); :meth:`match` tells a file's image and class."""

    def __init__(self, pattern: str, option: str = "--mask-pattern") -> None:
        self.text = pattern
        parts = pattern.replace("\\", "/").split("/")
        problem = _pattern_problem(pattern, parts)
        if problem:
            raise DataError(f"{option} {pattern!r}: {problem}. Example: '{{stem}}_*.png' for "
                            "case1_liver_0.png, '{class}/{stem}.png' for liver/case1.png")
        self.depth = len(parts)
        self.has_class = "{class}" in pattern
        self._stem_part = next(i for i, part in enumerate(parts) if "{stem}" in part)
        stem_part = parts[self._stem_part]
        self._prefix, after_stem = stem_part.split("{stem}")
        before = "/".join(parts[:self._stem_part])
        after = "/".join([after_stem, *parts[self._stem_part + 1:]])
        self._before = re.compile(_regex(before)) if before else None
        self._after = re.compile(_regex(after))

    def match(self, relative: str, stems: Collection[str]) -> tuple[str, str] | None:
        """``(image stem, class name)`` of a file at ``relative`` (``/``-separated), or None.

        Of several image stems that fit, the longest wins (``case1_z003`` over ``case1``).
        """
        parts = relative.split("/")
        if len(parts) != self.depth:
            return None
        name = ""
        if self._before is not None:
            head = self._before.fullmatch("/".join(parts[:self._stem_part]))
            if head is None:
                return None
            name = head.groupdict().get("cls") or ""
        segment = parts[self._stem_part]
        if not segment.startswith(self._prefix):
            return None
        rest = segment[len(self._prefix):]
        tail = "/".join(parts[self._stem_part + 1:])
        for end in range(len(rest), 0, -1):
            stem = rest[:end]
            if stem not in stems:
                continue
            remainder = rest[end:] + ("/" + tail if tail else "")
            found = self._after.fullmatch(remainder)
            if found is not None:
                return stem, name or found.groupdict().get("cls") or ""
        return None

    def index(self, mask_dir: Path, stems: Collection[str],
              found: list[DataProblem]) -> dict[str, tuple[MaskPart, ...]]:
        """``{image stem: its mask parts}`` for the files under ``mask_dir``; strays become problems."""
        by_stem: dict[str, list[tuple[str, Path]]] = {}
        for path in _mask_files(mask_dir, self.depth):
            relative = path.relative_to(mask_dir).as_posix()
            matched = self.match(relative, stems)
            if matched is None:
                found.append(DataProblem(path, f"matches no image through the mask pattern {self.text!r}",
                                         "remove it, or fix --mask-pattern"))
                continue
            stem, name = matched
            by_stem.setdefault(stem, []).append((name, path))
        names = sorted({name for parts in by_stem.values() for name, _ in parts})
        labels = {name: index + 1 for index, name in enumerate(names)} if self.has_class else {}
        return {stem: tuple(sorted((MaskPart(path, labels.get(name, 1), name) for name, path in parts),
                                   key=lambda part: (part.label, str(part.path))))
                for stem, parts in by_stem.items()}


def merge_mask_parts(parts: Sequence[MaskPart]) -> np.ndarray:
    """The label map of an image's mask parts, by the module's merge rule (``int32 (H, W)``)."""
    if not parts:
        raise DataError("no mask files to merge")
    merged: np.ndarray | None = None
    for part in sorted(parts, key=lambda part: part.label):
        binary = read_mask(part.path, mode="binary")
        if merged is None:
            merged = np.zeros(binary.shape, np.int32)
        elif binary.shape != merged.shape:
            raise UnreadableFileError(part.path, f"this mask is {binary.shape[1]}x{binary.shape[0]} but "
                                      f"{parts[0].path.name} of the same image is "
                                      f"{merged.shape[1]}x{merged.shape[0]}",
                                      "all masks of one image must have the image's size")
        merged[binary > 0] = part.label
    return merged  # type: ignore[return-value]


def class_names_of(parts_by_image: Sequence[Sequence[MaskPart]]) -> list[str]:
    """The class names in label order (label k is entry k-1); empty without ``{class}``."""
    labels = {part.label: part.name for parts in parts_by_image for part in parts if part.name}
    return [labels.get(label, f"label_{label}") for label in range(1, max(labels, default=0) + 1)]


def renumber_parts(parts: Sequence[MaskPart], names: Sequence[str]) -> tuple[MaskPart, ...]:
    """``parts`` with labels from ``names`` (label k is ``names[k-1]``); parts without a class keep theirs.

    Two folders (train/ and val/) number the classes each of them holds; renumbering both
    by the union of their names gives one numbering (:func:`medistill.data.samples.number_classes_together`).
    """
    labels = {name: index + 1 for index, name in enumerate(names)}
    return tuple(replace(part, label=labels[part.name]) if part.name else part for part in parts)


def _pattern_problem(pattern: str, parts: list[str]) -> str | None:
    if pattern.count("{stem}") != 1:
        return "it must hold {stem} exactly once"
    if pattern.count("{class}") > 1:
        return "{class} may appear once"
    if any(part in ("", ".", "..") for part in parts) or pattern.startswith("/"):
        return "use a relative path inside the mask folder, without '..' or empty parts"
    leftover = re.sub(r"\{stem\}|\{class\}", "", pattern)
    if "{" in leftover or "}" in leftover or "**" in pattern:
        return "only {stem}, {class}, * and ? are special (no other braces, no **)"
    stem_part = next(part for part in parts if "{stem}" in part)
    before = stem_part.split("{stem}")[0]
    if any(char in before for char in "*?") or "{class}" in before:
        return "{stem} must start its file or folder name, or follow fixed text"
    if not any(file_extension("x" + tail) or "*" in tail for tail in [parts[-1]]):
        return "the file name must end with an image extension (.png …) or *"
    return None


def _regex(text: str) -> str:
    """A glob-like piece of pattern as a regular expression; {class} is the group ``cls``."""
    out = []
    for token in re.split(r"(\{class\}|\*|\?)", text):
        if token == "{class}":
            out.append(r"(?P<cls>[^/]+)")
        elif token == "*":
            out.append(r"[^/]*")
        elif token == "?":
            out.append(r"[^/]")
        else:
            out.append(re.escape(token))
    return "".join(out)


def _mask_files(mask_dir: Path, depth: int) -> list[Path]:
    """Visible image files exactly ``depth`` path parts below ``mask_dir``, sorted."""
    files = []
    for root, folders, names in os.walk(mask_dir):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        level = len(Path(root).relative_to(mask_dir).parts) + 1
        if level > depth:
            folders[:] = []
            continue
        if level == depth:
            files += [Path(root) / name for name in names if not name.startswith(".") and file_extension(name)]
    return sorted(files)
