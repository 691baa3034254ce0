"""The boxes file: round trip and schema errors that name the file and the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medistill.boxes import FORMAT_NAME, FORMAT_VERSION, Box, BoxesFile, ImageBoxes, read_boxes, write_boxes
from medistill.data import Sample
from medistill.errors import DataError


def example() -> BoxesFile:
    return BoxesFile(
        class_names=["lesion", "cyst"],
        source={"kind": "detector", "weights": "run/weights/best.pt", "conf": 0.25},
        images=[
            ImageBoxes("a.png", "a", 64, 48, [Box(1.5, 2.25, 30.0, 40.0, score=0.875, class_id=1),
                                              Box(0, 0, 64, 48, score=0.5, class_id=0)]),
            ImageBoxes("b.png", "b", 32, 32, []),
            ImageBoxes("vol.nii.gz", "vol_z007", 20, 10, [Box(2, 3, 4, 5)], slice_index=7),
        ],
    )


def test_round_trip(tmp_path: Path):
    path = tmp_path / "boxes.json"
    write_boxes(path, example())
    assert read_boxes(path) == example()
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT_NAME and data["version"] == FORMAT_VERSION
    first = data["images"][0]
    assert first["boxes"][0] == {"xyxy": [1.5, 2.25, 30.0, 40.0], "score": 0.875, "class": 1}
    assert data["images"][1]["boxes"] == []  # an image without boxes is listed
    assert data["images"][2]["slice"] == 7 and data["images"][0]["slice"] is None
    assert read_boxes(path).by_stem()["vol_z007"].file == "vol.nii.gz"
    assert read_boxes(path).num_boxes == 3


def test_entry_for_a_data_layer_sample():
    sample = Sample("vol_z003", Path("/data/vol.nii.gz"), None, 3)
    entry = ImageBoxes.for_sample(sample, 20, 10, [Box(0, 0, 1, 1)])
    assert (entry.file, entry.stem, entry.slice_index, entry.width) == ("vol.nii.gz", "vol_z003", 3, 20)


def write_raw(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def valid_dict() -> dict:
    return {"format": FORMAT_NAME, "version": 1, "class_names": ["lesion"], "source": {},
            "images": [{"file": "a.png", "stem": "a", "slice": None, "width": 10, "height": 8,
                        "boxes": [{"xyxy": [1, 1, 5, 5], "score": 0.9, "class": 0}]}]}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.update(format="other"), "'format' must be"),
    (lambda d: d.update(class_names=[]), "class_names"),
    (lambda d: d["images"][0]["boxes"][0].update(xyxy=[1, 1, 11, 5]), r"images\[0\].boxes\[0\]: .* inside the 10x8"),
    (lambda d: d["images"][0]["boxes"][0].update(xyxy=[5, 1, 1, 5]), r"images\[0\].boxes\[0\]"),
    (lambda d: d["images"][0]["boxes"][0].update(score=1.5), "'score' must be a number in"),
    (lambda d: d["images"][0]["boxes"][0].update({"class": 1}), "'class' must be an integer index"),
    (lambda d: d["images"][0].update(width=0), r"images\[0\]: 'width' and 'height'"),
    (lambda d: d["images"][0].pop("boxes"), "'boxes' must be a list"),
    (lambda d: d["images"].append(dict(d["images"][0])), "listed twice"),
])
def test_schema_errors_name_the_file_and_entry(tmp_path: Path, change, message):
    data = valid_dict()
    change(data)
    path = write_raw(tmp_path / "bad.json", data)
    with pytest.raises(DataError, match=message) as error:
        read_boxes(path)
    assert str(path) in str(error.value)


def test_unreadable_and_missing_files(tmp_path: Path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="not a readable JSON"):
        read_boxes(broken)
    with pytest.raises(DataError, match="does not exist"):
        read_boxes(tmp_path / "missing.json")


def test_writing_refuses_what_could_not_be_read(tmp_path: Path):
    bad = BoxesFile(class_names=["a"], images=[ImageBoxes("a.png", "a", 4, 4, [Box(0, 0, 9, 9)])])
    with pytest.raises(DataError, match="inside the 4x4"):
        write_boxes(tmp_path / "x.json", bad)
    assert not (tmp_path / "x.json").exists()
