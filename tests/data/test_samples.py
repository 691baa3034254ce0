"""Pairing by stem, NIfTI slice expansion and data-set folder layouts."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medistill.data.io import clear_volume_cache
from medistill.data.samples import Sample, find_splits, load_sample, pair_folder
from medistill.errors import DataError, DataProblem


@pytest.fixture(autouse=True)
def _fresh_volume_cache():
    clear_volume_cache()
    yield
    clear_volume_cache()


def write_png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def identified_image(identity: int) -> np.ndarray:
    """A tiny image whose every pixel says which example it is."""
    return np.full((6, 6), 10 * identity, np.uint8)


def identified_mask(identity: int) -> np.ndarray:
    """A tiny {0, 255} mask with ``identity + 1`` foreground pixels."""
    mask = np.zeros(36, np.uint8)
    mask[: identity + 1] = 255
    return mask.reshape(6, 6)


def save_nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


# --------------------------------------------------------------------------- pairing


def test_pairs_by_stem_whatever_the_creation_order(tmp_path):
    names = ["case3", "case10", "alpha", "case2", "zeta"]
    order = list(range(len(names)))
    random.Random(1).shuffle(order)
    for identity in order:  # masks written in a different order than the images
        write_png(tmp_path / "masks" / f"{names[identity]}.png", identified_mask(identity))
    for identity in range(len(names)):
        write_png(tmp_path / "images" / f"{names[identity]}.png", identified_image(identity))
    # an image without a mask in the middle would shift any pairing by position
    write_png(tmp_path / "images" / "case25.png", identified_image(9))
    problems: list[DataProblem] = []
    samples = pair_folder(tmp_path / "images", tmp_path / "masks", problems=problems)
    assert [s.stem for s in samples] == sorted(names)
    for sample in samples:
        image, mask = load_sample(sample)
        identity = int(image[0, 0, 0]) // 10
        assert names[identity] == sample.stem
        assert int(mask.sum()) == identity + 1, f"{sample.stem} got another file's mask"
    assert [p.path.name for p in problems] == ["case25.png"]


def test_mask_suffix_in_a_separate_folder_and_in_the_same_folder(tmp_path):
    write_png(tmp_path / "images" / "a.png", identified_image(1))
    write_png(tmp_path / "masks" / "a_mask.png", identified_mask(1))
    [sample] = pair_folder(tmp_path / "images", tmp_path / "masks", mask_suffix="_mask")
    assert sample.stem == "a" and sample.mask_path.name == "a_mask.png"

    write_png(tmp_path / "both" / "b.png", identified_image(2))
    write_png(tmp_path / "both" / "b_mask.png", identified_mask(2))
    [sample] = pair_folder(tmp_path / "both", tmp_path / "both", mask_suffix="_mask")
    assert (sample.stem, sample.image_path.name, sample.mask_path.name) == (
        "b", "b.png", "b_mask.png")
    with pytest.raises(DataError, match="mask_suffix"):
        pair_folder(tmp_path / "both", tmp_path / "both")


def test_jpeg_image_pairs_with_png_mask(tmp_path):
    write_png(tmp_path / "images" / "a.jpg", identified_image(1))
    write_png(tmp_path / "masks" / "a.png", identified_mask(1))
    [sample] = pair_folder(tmp_path / "images", tmp_path / "masks")
    assert sample == Sample("a", tmp_path / "images" / "a.jpg", tmp_path / "masks" / "a.png")


def test_pairing_problems_are_collected_and_reported_together(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "good.png", identified_image(1))
    write_png(masks / "good.png", identified_mask(1))
    write_png(images / "lonely.png", identified_image(2))
    write_png(masks / "orphan.png", identified_mask(3))
    write_png(images / "twice.png", identified_image(4))
    write_png(images / "twice.tif", identified_image(4))
    write_png(masks / "twice.png", identified_mask(4))
    (images / "README.txt").write_text("not an image")

    problems: list[DataProblem] = []
    samples = pair_folder(images, masks, problems=problems)
    assert [s.stem for s in samples] == ["good"]
    named = {p.path.name for p in problems}
    assert {"lonely.png", "orphan.png", "twice.png"} <= named
    text = "\n".join(str(p) for p in problems)
    assert "twice.tif" in text and "no mask" in text and "without an image" in text

    with pytest.raises(DataError) as caught:
        pair_folder(images, masks)
    for name in ("lonely.png", "orphan.png", "twice.tif"):
        assert name in str(caught.value)


def test_mask_without_the_suffix_is_reported(tmp_path):
    write_png(tmp_path / "images" / "a.png", identified_image(1))
    write_png(tmp_path / "masks" / "a_mask.png", identified_mask(1))
    write_png(tmp_path / "masks" / "a.png", identified_mask(1))
    problems: list[DataProblem] = []
    samples = pair_folder(tmp_path / "images", tmp_path / "masks", mask_suffix="_mask",
                          problems=problems)
    assert [s.mask_path.name for s in samples] == ["a_mask.png"]
    assert [p.path.name for p in problems] == ["a.png"] and "_mask" in problems[0].what


def test_images_without_mask_folder(tmp_path):
    write_png(tmp_path / "b.png", identified_image(1))
    write_png(tmp_path / "a.bmp", identified_image(2))
    samples = pair_folder(tmp_path)
    assert [(s.stem, s.mask_path) for s in samples] == [("a", None), ("b", None)]
    image, mask = load_sample(samples[0])
    assert mask is None and image.shape == (6, 6, 1)


def test_missing_or_empty_folders_raise(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        pair_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        pair_folder(tmp_path / "empty")
    write_png(tmp_path / "images" / "a.png", identified_image(1))
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="holds no masks"):
        pair_folder(tmp_path / "images", tmp_path / "masks")


# --------------------------------------------------------------------------- NIfTI


def nifti_pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    image = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    mask = np.zeros((5, 4, 4), np.uint8)
    mask[1:3, 1:3, 1] = 1
    mask[2, 2, 2] = 1
    return (save_nifti(tmp_path / "images" / "vol.nii.gz", image),
            save_nifti(tmp_path / "masks" / "vol.nii", mask), image, mask)


def test_nifti_volume_expands_into_named_slices(tmp_path):
    image_path, mask_path, image, mask = nifti_pair(tmp_path)
    samples = pair_folder(tmp_path / "images", tmp_path / "masks")
    assert [s.stem for s in samples] == ["vol_z000", "vol_z001", "vol_z002", "vol_z003"]
    assert all(s.image_path == image_path and s.mask_path == mask_path for s in samples)
    slice_image, slice_mask = load_sample(samples[1])
    assert slice_image.shape == (4, 5, 1) and slice_mask.shape == (4, 5)
    np.testing.assert_array_equal(slice_image[..., 0], image[:, :, 1].T[::-1])
    np.testing.assert_array_equal(slice_mask, mask[:, :, 1].T[::-1])


def test_empty_slices_can_be_dropped(tmp_path):
    nifti_pair(tmp_path)
    samples = pair_folder(tmp_path / "images", tmp_path / "masks", keep_empty_slices=False)
    assert [(s.stem, s.slice_index) for s in samples] == [("vol_z001", 1), ("vol_z002", 2)]


def test_nifti_axis_chooses_the_slicing_direction(tmp_path):
    nifti_pair(tmp_path)
    samples = pair_folder(tmp_path / "images", tmp_path / "masks", nifti_axis=0,
                          keep_empty_slices=False)
    assert [s.stem for s in samples] == ["vol_z001", "vol_z002"]
    assert all(s.slice_axis == 0 for s in samples)
    assert load_sample(samples[0])[1].shape == (4, 4)


def test_volume_pairing_problems(tmp_path):
    save_nifti(tmp_path / "images" / "v.nii.gz", np.zeros((3, 3, 2), np.float32))
    save_nifti(tmp_path / "masks" / "v.nii.gz", np.zeros((3, 4, 2), np.uint8))
    save_nifti(tmp_path / "images" / "w.nii.gz", np.zeros((3, 3, 2), np.float32))
    write_png(tmp_path / "masks" / "w.png", identified_mask(1))
    problems: list[DataProblem] = []
    assert pair_folder(tmp_path / "images", tmp_path / "masks", problems=problems) == []
    text = "\n".join(str(p) for p in problems)
    assert "(3, 4, 2)" in text and "(3, 3, 2)" in text and "w.png" in text


# --------------------------------------------------------------------------- layouts


def test_find_splits_flat_layout(tmp_path):
    write_png(tmp_path / "images" / "a.png", identified_image(1))
    write_png(tmp_path / "masks" / "a.png", identified_mask(1))
    assert find_splits(tmp_path) == {"all": (tmp_path / "images", tmp_path / "masks")}


def test_find_splits_unlabelled_flat_layout(tmp_path):
    write_png(tmp_path / "images" / "a.png", identified_image(1))
    assert find_splits(tmp_path) == {"all": (tmp_path / "images", None)}


def test_find_splits_split_layout_lists_the_splits_present(tmp_path):
    for split in ("train", "test"):
        write_png(tmp_path / split / "images" / "a.png", identified_image(1))
        write_png(tmp_path / split / "masks" / "a.png", identified_mask(1))
    splits = find_splits(tmp_path)
    assert list(splits) == ["train", "test"]
    assert splits["test"] == (tmp_path / "test" / "images", tmp_path / "test" / "masks")


def test_find_splits_refuses_other_layouts(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_splits(tmp_path / "missing")
    write_png(tmp_path / "pictures" / "a.png", identified_image(1))
    with pytest.raises(DataError) as caught:
        find_splits(tmp_path)
    message = str(caught.value)
    assert "pictures/" in message and "images" in message and "train" in message
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="no 'images' folder"):
        find_splits(tmp_path)


def test_find_splits_refuses_empty_folders(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        find_splits(tmp_path)
    write_png(tmp_path / "images" / "a.png", identified_image(1))
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="holds no masks"):
        find_splits(tmp_path)
