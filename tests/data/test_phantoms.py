"""Synthetic phantoms: determinism, mask/image agreement, negatives, labels, folder rules."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from medistill.data.phantoms import generate_phantoms, make_phantom
from medistill.errors import MedistillError

SIZE = 64


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*.png"))}


def test_writes_layout_readme_and_parameters(tmp_path):
    out = tmp_path / "phantoms"
    paths = generate_phantoms(out, n=3, size=SIZE, seed=1)
    assert [p.name for p in paths] == ["phantom_0000.png", "phantom_0001.png", "phantom_0002.png"]
    for path in paths:
        image, mask = read_png(path), read_png(out / "masks" / path.name)
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
        assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE)
        assert set(np.unique(mask)) <= {0, 255}
    parameters = json.loads((out / "phantoms.json").read_text())
    assert parameters["n"] == 3 and parameters["size"] == SIZE and parameters["seed"] == 1
    assert len(parameters["images"]) == 3
    assert "phantoms" in (out / "README.md").read_text()


def test_same_seed_gives_identical_files(tmp_path):
    generate_phantoms(tmp_path / "a", n=4, size=SIZE, seed=3)
    generate_phantoms(tmp_path / "b", n=4, size=SIZE, seed=3)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


def test_phantom_does_not_depend_on_n(tmp_path):
    generate_phantoms(tmp_path / "few", n=2, size=SIZE, seed=5)
    generate_phantoms(tmp_path / "many", n=5, size=SIZE, seed=5)
    few, many = folder_bytes(tmp_path / "few"), folder_bytes(tmp_path / "many")
    assert few == {name: many[name] for name in few}


def test_different_seed_gives_different_images():
    first, second = make_phantom(0, SIZE, seed=0), make_phantom(0, SIZE, seed=1)
    assert not np.array_equal(first.image, second.image)


def test_lesions_differ_from_the_tissue_around_them(tmp_path):
    out = tmp_path / "p"
    generate_phantoms(out, n=30, size=128, seed=0, lesion_probability=1.0)
    differences = []
    for path in sorted((out / "images").glob("*.png")):
        image = read_png(path).astype(float)
        lesion = read_png(out / "masks" / path.name) > 127
        components, count = ndimage.label(lesion, structure=np.ones((3, 3)))
        for index in range(1, count + 1):
            blob = components == index
            ring = ndimage.binary_dilation(blob, iterations=3) & ~lesion
            differences.append(abs(image[blob].mean() - image[ring].mean()))
    assert len(differences) >= 30
    assert np.median(differences) > 15  # of 255: visible, but the textures overlap
    assert np.mean(np.asarray(differences) > 5) > 0.8


def test_some_images_are_negatives(tmp_path):
    out = tmp_path / "p"
    generate_phantoms(out, n=20, size=SIZE, seed=0, lesion_probability=0.5)
    lesion_pixels = [int((read_png(p) > 127).sum()) for p in sorted((out / "masks").glob("*.png"))]
    empty = sum(1 for count in lesion_pixels if count == 0)
    assert 0 < empty < 20


def test_no_lesions_at_probability_zero():
    assert all(make_phantom(i, SIZE, lesion_probability=0.0).lesions == 0 for i in range(5))


def test_multiclass_masks_are_label_maps(tmp_path):
    out = tmp_path / "p"
    generate_phantoms(out, n=6, size=SIZE, seed=2, multiclass=True, lesion_probability=1.0)
    values = set()
    for path in (out / "masks").glob("*.png"):
        values |= set(np.unique(read_png(path)).tolist())
    assert values <= {0, 1, 2, 3}
    assert {0, 1, 2, 3} <= values
    assert json.loads((out / "phantoms.json").read_text())["class_names"][3] == "lesion"


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "p"
    generate_phantoms(out, n=4, size=SIZE)
    with pytest.raises(MedistillError, match="not empty"):
        generate_phantoms(out, n=2, size=SIZE)
    generate_phantoms(out, n=2, size=SIZE, overwrite=True)
    assert sorted(p.name for p in (out / "images").glob("*.png")) == [
        "phantom_0000.png", "phantom_0001.png"]
    assert len(list((out / "masks").glob("*.png"))) == 2


@pytest.mark.parametrize("arguments", [
    {"n": 0}, {"size": 8}, {"seed": -1}, {"lesion_probability": 1.5},
])
def test_rejects_bad_parameters(tmp_path, arguments):
    settings = {"n": 2, "size": SIZE, **arguments}
    with pytest.raises(MedistillError):
        generate_phantoms(tmp_path / "p", **settings)
