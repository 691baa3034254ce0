"""validate_samples: every problem in one report, or skipped with a warning each."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from medistill.data.samples import Sample, load_sample, pair_folder
from medistill.data.validation import validate_samples
from medistill.errors import DataError, DataProblem

RNG = np.random.default_rng(0)


def write_png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def square_mask(size: int = 16) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[4:12, 4:12] = 255
    return mask


def add_pair(root: Path, stem: str, mask=None, image_size: int = 16) -> Sample:
    image = write_png(root / "images" / f"{stem}.png", np.full((image_size,) * 2, 80))
    mask_path = write_png(root / "masks" / f"{stem}.png",
                          square_mask(image_size) if mask is None else mask)
    return Sample(stem, image, mask_path)


@pytest.fixture
def mixed_set(tmp_path) -> dict[str, Sample]:
    """Two good samples and one of each kind of bad file."""
    samples = {
        "good": add_pair(tmp_path, "good"),
        "negative": add_pair(tmp_path, "negative", np.zeros((16, 16))),
        "small_mask": add_pair(tmp_path, "small_mask", square_mask(8)),
        "photo": add_pair(tmp_path, "photo", RNG.integers(0, 256, (16, 16))),
        "corrupt": add_pair(tmp_path, "corrupt"),
    }
    samples["corrupt"].image_path.write_bytes(RNG.bytes(200))
    return samples


def test_good_samples_pass_unchanged(tmp_path):
    samples = [add_pair(tmp_path, "a"), add_pair(tmp_path, "b", np.zeros((16, 16)))]
    assert validate_samples(samples) == samples


def test_every_bad_file_is_named_in_one_error(mixed_set):
    with pytest.raises(DataError) as caught:
        validate_samples(list(mixed_set.values()))
    message = str(caught.value)
    assert str(mixed_set["corrupt"].image_path) in message
    assert str(mixed_set["photo"].mask_path) in message and "photograph" in message
    small = mixed_set["small_mask"]
    assert str(small.mask_path) in message and str(small.image_path) in message
    assert "8×8" in message and "16×16" in message
    for fine in ("good", "negative"):
        assert str(mixed_set[fine].mask_path) not in message


def test_skip_bad_returns_the_good_samples_and_warns_per_bad_file(mixed_set, caplog):
    with caplog.at_level(logging.WARNING, logger="medistill.data"):
        kept = validate_samples(list(mixed_set.values()), skip_bad=True)
    assert kept == [mixed_set["good"], mixed_set["negative"]]
    warned = [record for record in caplog.records if record.name == "medistill.data"]
    assert len(warned) == 3
    for bad in ("corrupt", "photo", "small_mask"):
        assert any(f"{bad}.png" in record.getMessage() for record in warned)


def test_jpeg_mask_with_noise_is_not_taken_for_a_photograph(tmp_path):
    image = write_png(tmp_path / "a.png", np.full((32, 32), 50))
    mask = tmp_path / "a_mask.jpg"
    cv2.imwrite(str(mask), square_mask(32), [cv2.IMWRITE_JPEG_QUALITY, 60])
    sample = Sample("a", image, mask)
    assert validate_samples([sample]) == [sample]


def test_labels_above_max_label_are_reported_in_labels_mode(tmp_path):
    sample = add_pair(tmp_path, "many", np.arange(256).reshape(16, 16))
    with pytest.raises(DataError, match="exceed max_label=20"):
        validate_samples([sample], mask_mode="labels")


def test_16_bit_two_valued_mask_reads_as_foreground(tmp_path):
    image = write_png(tmp_path / "a.png", np.zeros((16, 16)))
    mask = tmp_path / "a.tif"
    tifffile.imwrite(mask, square_mask().astype(np.uint16))  # 0/255 in a 16-bit file
    sample = Sample("a", image, mask)
    assert validate_samples([sample]) == [sample]
    _, loaded = load_sample(sample)
    np.testing.assert_array_equal(loaded, (square_mask() > 0).astype(np.int32))


def test_16_bit_mask_that_would_read_as_all_background_is_reported(tmp_path):
    image = write_png(tmp_path / "a.png", np.zeros((16, 16)))
    mask = tmp_path / "a.tif"
    values = square_mask().astype(np.uint16) // 255 * 100
    values[0, 0] = 200  # three values above max_label: thresholded at 32767, nothing left
    tifffile.imwrite(mask, values)
    with pytest.raises(DataError, match="all background"):
        validate_samples([Sample("a", image, mask)])


def test_empty_list_is_an_error():
    with pytest.raises(DataError, match="empty"):
        validate_samples([])


def test_skip_bad_with_nothing_good_left_is_an_error(mixed_set):
    with pytest.raises(DataError, match="no usable sample"):
        validate_samples([mixed_set["corrupt"], mixed_set["photo"]], skip_bad=True)


def test_pairing_problems_join_the_same_report(tmp_path):
    add_pair(tmp_path, "good")
    add_pair(tmp_path, "bad", RNG.integers(0, 256, (16, 16)))
    write_png(tmp_path / "images" / "lonely.png", np.zeros((16, 16)))
    problems: list[DataProblem] = []
    samples = pair_folder(tmp_path / "images", tmp_path / "masks", problems=problems)
    with pytest.raises(DataError) as caught:
        validate_samples(samples, problems=problems)
    assert "lonely.png" in str(caught.value) and "bad.png" in str(caught.value)
    assert "2 problem(s)" in str(caught.value)


def test_volume_slices_are_validated(tmp_path):
    import nibabel as nib

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4)),
             str(tmp_path / "images" / "v.nii.gz"))
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[1, 1, 1] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "masks" / "v.nii.gz"))
    samples = pair_folder(tmp_path / "images", tmp_path / "masks")
    assert validate_samples(samples) == samples
