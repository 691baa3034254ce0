"""The boxes file: candidate boxes per image, the contract between detection and distillation.

A boxes file is JSON, written atomically, read back with :func:`read_boxes`:

.. code-block:: json

    {
      "format": "medistill.boxes",
      "version": 1,
      "class_names": ["lesion"],
      "source": {"kind": "detector", "weights": "runs/det/weights/best.pt", "conf": 0.25},
      "images": [
        {"file": "case7.png", "stem": "case7", "slice": null, "width": 256, "height": 240,
         "boxes": [{"xyxy": [31.5, 40.0, 77.25, 90.0], "score": 0.91, "class": 0}]},
        {"file": "case8.png", "stem": "case8", "slice": null, "width": 256, "height": 240,
         "boxes": []}
      ]
    }

* ``xyxy`` is ``[x1, y1, x2, y2]`` in pixels of the original image, in pixel-edge
  coordinates: pixel column ``c`` spans ``[c, c + 1)``, so a box around columns 3..7
  and rows 2..5 is ``[3, 2, 8, 6]``. ``0 <= x1 <= x2 <= width``, same for y.
* ``score`` is the detector's confidence in [0, 1] (1.0 for boxes taken from masks);
  ``class`` indexes ``class_names``.
* ``stem`` is the data layer's sample stem (``<stem>_z<index>`` for a NIfTI slice, whose
  ``slice`` is the index; ``null`` for 2-D files), so a box list maps back to its image
  with :func:`medistill.data.pair_folder`. Every image read is listed, with an empty
  ``boxes`` list when nothing was found.
* ``source`` records how the boxes were made (free-form; ``kind`` is ``"detector"`` or
  ``"masks"``).

Example:

>>> import tempfile, os
>>> boxes = BoxesFile(class_names=["lesion"], source={"kind": "masks"}, images=[
...     ImageBoxes("a.png", "a", 8, 6, [Box(3, 2, 8, 6, score=1.0, class_id=0)])])
>>> path = os.path.join(tempfile.mkdtemp(), "boxes.json")
>>> write_boxes(path, boxes)
>>> read_boxes(path) == boxes
True
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from medistill.errors import DataError
from medistill.fileio import write_json_atomic

FORMAT_NAME = "medistill.boxes"
FORMAT_VERSION = 1
# Coordinates may leave the image by rounding noise of a detector; more is an error.
_EDGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel-edge coordinates of the original image.

    >>> Box(3, 2, 8, 6).to_yolo(width=16, height=8)
    (0.34375, 0.5, 0.3125, 0.5)
    """

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0
    class_id: int = 0

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def xyxy(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    def to_yolo(self, width: int, height: int) -> tuple[float, float, float, float]:
        """``(xc, yc, w, h)`` normalised by the image size, as YOLO label files hold them."""
        return ((self.x1 + self.x2) / 2 / width, (self.y1 + self.y2) / 2 / height,
                self.width / width, self.height / height)

    @classmethod
    def from_yolo(cls, xc: float, yc: float, w: float, h: float, width: int, height: int,
                  class_id: int = 0, score: float = 1.0) -> "Box":
        """The inverse of :meth:`to_yolo`."""
        return cls((xc - w / 2) * width, (yc - h / 2) * height, (xc + w / 2) * width,
                   (yc + h / 2) * height, score=score, class_id=class_id)


@dataclass
class ImageBoxes:
    """The boxes of one image (``slice_index`` set for a NIfTI slice)."""

    file: str
    stem: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    slice_index: int | None = None

    @classmethod
    def for_sample(cls, sample: Any, width: int, height: int, boxes: list[Box]) -> "ImageBoxes":
        """The entry of a data-layer ``Sample`` (file name, stem and slice taken from it)."""
        return cls(Path(sample.image_path).name, sample.stem, int(width), int(height),
                   list(boxes), sample.slice_index)


@dataclass
class BoxesFile:
    """A whole boxes file: class names, provenance and one entry per image."""

    class_names: list[str]
    images: list[ImageBoxes]
    source: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def by_stem(self) -> dict[str, ImageBoxes]:
        """``{stem: ImageBoxes}`` for looking images up."""
        return {entry.stem: entry for entry in self.images}

    @property
    def num_boxes(self) -> int:
        return sum(len(entry.boxes) for entry in self.images)


# --------------------------------------------------------------------------- writing


def boxes_to_dict(boxes: BoxesFile) -> dict[str, Any]:
    """The JSON-ready dictionary of a :class:`BoxesFile` (validated first)."""
    data = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "class_names": list(boxes.class_names),
        "source": dict(boxes.source),
        "images": [
            {"file": entry.file, "stem": entry.stem, "slice": entry.slice_index,
             "width": int(entry.width), "height": int(entry.height),
             "boxes": [{"xyxy": [_number(v) for v in box.xyxy], "score": _number(box.score),
                        "class": int(box.class_id)} for box in entry.boxes]}
            for entry in boxes.images
        ],
    }
    boxes_from_dict(data, "<boxes being written>")  # never write what cannot be read back
    return data


def write_boxes(path: str | os.PathLike, boxes: BoxesFile) -> None:
    """Write ``boxes`` to ``path`` as JSON, atomically."""
    write_json_atomic(path, boxes_to_dict(boxes))


def _number(value: float) -> float:
    # Four decimals of a pixel are plenty and keep files readable.
    return round(float(value), 4)


# --------------------------------------------------------------------------- reading


def read_boxes(path: str | os.PathLike) -> BoxesFile:
    """Read and validate a boxes file; a bad file raises ``DataError`` naming the entry."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"the boxes file {path} does not exist (write one with `detection.py "
                        "predict` or `detection.py boxes-from-masks`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not a readable JSON boxes file ({error})") from error
    return boxes_from_dict(data, str(path))


def boxes_from_dict(data: Any, where: str = "<boxes>") -> BoxesFile:
    """Validate a parsed boxes file and build the dataclasses; ``where`` names it in errors."""
    _require(isinstance(data, dict), where, "the file must hold a JSON object")
    _require(data.get("format") == FORMAT_NAME, where,
             f"'format' must be {FORMAT_NAME!r} (got {data.get('format')!r}); is this a boxes file?")
    version = data.get("version")
    _require(version == FORMAT_VERSION, where,
             f"version {version!r} is not supported (this medistill reads version "
             f"{FORMAT_VERSION}); rewrite the file with this version")
    names = data.get("class_names")
    _require(isinstance(names, list) and names and all(isinstance(n, str) for n in names),
             where, "'class_names' must be a non-empty list of strings")
    source = data.get("source", {})
    _require(isinstance(source, dict), where, "'source' must be an object")
    images = data.get("images")
    _require(isinstance(images, list), where, "'images' must be a list")
    entries, seen = [], set()
    for index, item in enumerate(images):
        entry = _image_entry(item, f"{where}: images[{index}]", len(names))
        _require(entry.stem not in seen, f"{where}: images[{index}]",
                 f"stem {entry.stem!r} is listed twice")
        seen.add(entry.stem)
        entries.append(entry)
    return BoxesFile(class_names=list(names), images=entries, source=dict(source),
                     version=int(version))


def _image_entry(item: Any, where: str, num_classes: int) -> ImageBoxes:
    _require(isinstance(item, dict), where, "must be an object")
    for key, kind in (("file", str), ("stem", str)):
        _require(isinstance(item.get(key), kind) and item[key], where,
                 f"{key!r} must be a non-empty string")
    _check_file_name(item["file"], where)
    stem = item["stem"]
    _require(not any(c in stem for c in "/\\\0") and stem not in (".", ".."), where,
             f"'stem' {stem!r} must be a plain name (no '/', '\\', or '..'): it names the image's "
             "group in a teacher cache")
    width, height = item.get("width"), item.get("height")
    _require(_is_int(width) and _is_int(height) and width > 0 and height > 0, where,
             "'width' and 'height' must be positive integers")
    slice_index = item.get("slice")
    _require(slice_index is None or (_is_int(slice_index) and slice_index >= 0), where,
             "'slice' must be null or a non-negative integer")
    raw_boxes = item.get("boxes")
    _require(isinstance(raw_boxes, list), where, "'boxes' must be a list (empty when none)")
    boxes = [_box(raw, f"{where}.boxes[{b}]", width, height, num_classes)
             for b, raw in enumerate(raw_boxes)]
    return ImageBoxes(item["file"], item["stem"], int(width), int(height), boxes, slice_index)


def _check_file_name(name: str, where: str) -> None:
    """A boxes file names images relative to ``--image_dir``: no absolute path, no ``..``."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    _require(not posix.is_absolute() and not windows.anchor and "\0" not in name, where,
             f"'file' {name!r} is an absolute path; a boxes file names images relative to --image_dir "
             "(regenerate it with detection.py predict or boxes-from-masks)")
    _require(".." not in posix.parts and ".." not in windows.parts, where,
             f"'file' {name!r} leads out of --image_dir ('..'); a boxes file may name only images inside "
             "--image_dir")


def image_path(image_dir: str | os.PathLike, entry: ImageBoxes) -> Path:
    """The image file of ``entry`` inside ``image_dir``, symbolic links resolved.

    Raises :class:`DataError` naming the entry when the file (or a link on the way)
    leads outside ``image_dir``.
    """
    _check_file_name(entry.file, f"boxes file entry {entry.stem!r}")
    folder = Path(image_dir).resolve()
    path = (folder / entry.file).resolve()
    if path != folder and folder not in path.parents:
        raise DataError(f"boxes file entry {entry.stem!r}: 'file' {entry.file!r} resolves to {path}, outside "
                        f"--image_dir {image_dir} (a symbolic link?). medistill reads only images inside "
                        "--image_dir; copy the image into it")
    return Path(image_dir) / entry.file


def check_image_paths(boxes: BoxesFile, image_dir: str | os.PathLike) -> None:
    """:func:`image_path` for every entry: refuse a boxes file whose images leave ``image_dir``."""
    for entry in boxes.images:
        image_path(image_dir, entry)


def _box(raw: Any, where: str, width: int, height: int, num_classes: int) -> Box:
    _require(isinstance(raw, dict), where, "must be an object with 'xyxy', 'score', 'class'")
    xyxy = raw.get("xyxy")
    _require(isinstance(xyxy, list) and len(xyxy) == 4 and all(_is_finite(v) for v in xyxy),
             where, "'xyxy' must be four finite numbers [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    tol = _EDGE_TOLERANCE
    _require(-tol <= x1 <= x2 <= width + tol and -tol <= y1 <= y2 <= height + tol, where,
             f"{xyxy} is not a box inside the {width}x{height} image "
             "(need 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height)")
    score = raw.get("score")
    _require(_is_finite(score) and 0.0 <= score <= 1.0, where, "'score' must be a number in [0, 1]")
    class_id = raw.get("class")
    _require(_is_int(class_id) and 0 <= class_id < num_classes, where,
             f"'class' must be an integer index into class_names (0..{num_classes - 1})")
    return Box(x1, y1, x2, y2, score=float(score), class_id=int(class_id))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise DataError(f"{where}: {what}")
