"""Readers and writers of medistill.data.io, on small files each test writes itself.

Files are written with libraries other than the code under test (Pillow, OpenCV,
tifffile, nibabel, numpy), so a reader and writer cannot hide each other's bugs.
"""

from __future__ import annotations

import os

import cv2
import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from medistill.data import io
from medistill.data.io import (
    IMAGE_EXTENSIONS,
    clear_volume_cache,
    read_image,
    read_mask,
    read_mask_values,
    read_volume,
    strip_extension,
    volume_shape,
    volume_slice,
    write_image_png,
    write_mask_png,
)
from medistill.errors import DataError

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_volume_cache():
    clear_volume_cache()
    yield
    clear_volume_cache()


def disk_mask(size: int = 32, radius: float = 9.0) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return ((rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= radius**2).astype(np.uint8)


def save_pil(path, array, mode=None):
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


# --------------------------------------------------------------------------- names


def test_strip_extension_knows_double_and_upper_case_extensions():
    assert strip_extension("a.nii.gz") == "a"
    assert strip_extension("case.01.PNG") == "case.01"
    assert strip_extension("/x/y/b.tiff") == "b"
    assert strip_extension("notes.txt") == "notes.txt"
    assert ".nii.gz" in IMAGE_EXTENSIONS and ".jpg" in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- images


def test_grey_png_keeps_raw_values(tmp_path):
    pixels = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    image = read_image(save_pil(tmp_path / "g.png", pixels))
    assert image.dtype == np.float32 and image.shape == (6, 7, 1)
    np.testing.assert_array_equal(image[..., 0], pixels)


def test_rgb_png_comes_out_in_rgb_order(tmp_path):
    pixels = np.zeros((4, 5, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 200, 100, 10
    image = read_image(save_pil(tmp_path / "c.png", pixels))
    assert image.shape == (4, 5, 3)
    np.testing.assert_array_equal(image, pixels)


def test_rgba_drops_alpha(tmp_path):
    pixels = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    image = read_image(save_pil(tmp_path / "a.png", pixels, "RGBA"))
    np.testing.assert_array_equal(image, pixels[..., :3])


def test_bmp_and_jpeg_images(tmp_path):
    pixels = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(save_pil(tmp_path / "b.bmp", pixels)), pixels)
    flat = np.full((8, 8), 90, np.uint8)
    jpeg = read_image(save_pil(tmp_path / "j.jpg", flat))
    assert jpeg.shape == (8, 8, 1) and np.abs(jpeg - 90).max() <= 2


@pytest.mark.parametrize("dtype,value", [(np.uint8, 200), (np.uint16, 4000)])
def test_tiff_images_keep_8_and_16_bit_values(tmp_path, dtype, value):
    pixels = np.zeros((5, 6), dtype)
    pixels[1:3, 2:5] = value
    tifffile.imwrite(tmp_path / "t.tif", pixels)
    image = read_image(tmp_path / "t.tif")
    assert image.dtype == np.float32 and image.shape == (5, 6, 1)
    np.testing.assert_array_equal(image[..., 0], pixels.astype(np.float32))


def test_planar_tiff_becomes_channels_last(tmp_path):
    planar = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)  # the axes come from the file
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), np.moveaxis(planar, 0, -1))


def test_channels_first_npy_becomes_channels_last(tmp_path):
    planar = RNG.integers(0, 256, (3, 6, 7), dtype=np.uint8)
    np.save(tmp_path / "p.npy", planar)
    np.testing.assert_array_equal(read_image(tmp_path / "p.npy"), np.moveaxis(planar, 0, -1))


def test_npy_image(tmp_path):
    pixels = RNG.normal(size=(4, 4)).astype(np.float64)
    np.save(tmp_path / "n.npy", pixels)
    image = read_image(tmp_path / "n.npy")
    assert image.dtype == np.float32
    np.testing.assert_allclose(image[..., 0], pixels, rtol=1e-6)


@pytest.mark.parametrize("channels", [2, 5])
def test_two_or_many_channels_are_refused_with_a_clear_error(tmp_path, channels):
    path = tmp_path / f"c{channels}.npy"
    np.save(path, np.zeros((4, 4, channels), np.uint8))
    with pytest.raises(DataError, match=f"{channels} channels") as caught:
        read_image(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("extension", [".png", ".jpg", ".bmp", ".tif", ".npy", ".nii.gz"])
def test_corrupt_file_raises_data_error_naming_the_file(tmp_path, extension):
    path = tmp_path / f"broken{extension}"
    path.write_bytes(RNG.integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as caught:
        read_image(path)
    assert str(path) in str(caught.value) and "cannot read" in str(caught.value)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_image(tmp_path / "absent.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown file type"):
        read_image(tmp_path / "notes.txt")


# --------------------------------------------------------------------------- masks


def test_png_mask_0_255_reads_as_binary(tmp_path):
    truth = disk_mask()
    mask = read_mask(save_pil(tmp_path / "m.png", truth * 255))
    assert mask.dtype == np.int32 and mask.shape == truth.shape
    np.testing.assert_array_equal(mask, truth)


def test_jpeg_mask_with_compression_noise_reads_as_correct_binary(tmp_path):
    truth = disk_mask(64, 20)
    path = tmp_path / "m.jpg"
    cv2.imwrite(str(path), truth * 255, [cv2.IMWRITE_JPEG_QUALITY, 60])
    raw = read_mask_values(path)
    assert not set(np.unique(raw)) <= {0, 255}, "the test file must carry JPEG noise"
    mask = read_mask(path)
    assert set(np.unique(mask)) == {0, 1}
    assert (mask != truth).mean() < 0.005


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_16_bit_mask_0_65535_reads_as_binary(tmp_path, suffix):
    truth = disk_mask()
    path = tmp_path / f"m{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, truth.astype(np.uint16) * 65535)
    else:
        cv2.imwrite(str(path), truth.astype(np.uint16) * 65535)
    np.testing.assert_array_equal(read_mask(path), truth)


def test_16_bit_threshold_is_half_the_range(tmp_path):
    values = np.array([[0, 20000], [40000, 65535]], np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", values)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), [[0, 0], [1, 1]])


def test_rgb_mask_with_equal_channels_becomes_grey(tmp_path):
    truth = disk_mask()
    rgb = np.repeat(truth[..., None] * 255, 3, axis=2)
    np.testing.assert_array_equal(read_mask(save_pil(tmp_path / "m.png", rgb)), truth)


def test_coloured_mask_uses_601_luma(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (100, 50, 200)  # luma 0.299*100 + 0.587*50 + 0.114*200 = 82.05
    rgb[1, 1] = (0, 255, 0)  # luma 149.7: foreground when thresholded
    path = save_pil(tmp_path / "m.png", rgb)
    np.testing.assert_array_equal(read_mask(path, mode="labels"), [[82, 0], [0, 150]])
    np.testing.assert_array_equal(read_mask(path), [[0, 0], [0, 1]])


def test_label_map_is_kept_as_labels(tmp_path):
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    path = save_pil(tmp_path / "l.png", labels)
    np.testing.assert_array_equal(read_mask(path), labels)
    np.testing.assert_array_equal(read_mask(path, mode="binary"), [[0, 1], [1, 1]])


def test_values_above_max_label_are_thresholded_unless_labels_mode(tmp_path):
    values = np.array([[0, 1], [2, 200]], np.uint8)
    path = save_pil(tmp_path / "v.png", values)
    np.testing.assert_array_equal(read_mask(path), [[0, 0], [0, 1]])
    np.testing.assert_array_equal(read_mask(path, mode="labels"), values)
    np.testing.assert_array_equal(read_mask(path, max_label=255), values)


def test_palette_png_mask_gives_palette_indices(tmp_path):
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    picture = Image.fromarray(indices, "P")
    picture.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    picture.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), indices)
    assert read_image(tmp_path / "p.png")[0, 1].tolist() == [255, 0, 0]


def test_npy_float_masks(tmp_path):
    np.save(tmp_path / "soft.npy", np.array([[0.2, 0.7], [0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(read_mask(tmp_path / "soft.npy"), [[0, 1], [0, 1]])
    np.save(tmp_path / "labels.npy", np.array([[0.0, 2.0], [3.0, 1.0]]))
    np.testing.assert_array_equal(read_mask(tmp_path / "labels.npy"), [[0, 2], [3, 1]])
    np.save(tmp_path / "scaled.npy", np.array([[0.0, 255.0], [255.0, 0.0]]))
    np.testing.assert_array_equal(read_mask(tmp_path / "scaled.npy"), [[0, 1], [1, 0]])
    np.save(tmp_path / "flags.npy", np.array([[True, False]]))
    np.testing.assert_array_equal(read_mask(tmp_path / "flags.npy"), [[1, 0]])


def test_masks_with_negative_or_nan_values_are_refused(tmp_path):
    np.save(tmp_path / "neg.npy", np.array([[0, -1]], np.int16))
    with pytest.raises(DataError, match="negative"):
        read_mask(tmp_path / "neg.npy")
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    with pytest.raises(DataError, match="NaN"):
        read_mask(tmp_path / "nan.npy")
    with pytest.raises(DataError, match="mask mode"):
        read_mask(tmp_path / "neg.npy", mode="soft")


# --------------------------------------------------------------------------- writers


def test_write_mask_png_keeps_labels_and_leaves_no_temporary_file(tmp_path):
    labels = np.array([[0, 1, 2], [3, 0, 1]], np.int32)
    path = write_mask_png(tmp_path / "out" / "m.png", labels)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), labels)
    np.testing.assert_array_equal(read_mask(path), labels)
    assert os.listdir(tmp_path / "out") == ["m.png"]
    with pytest.raises(DataError, match="0..255"):
        write_mask_png(tmp_path / "bad.png", np.array([[0, 300]]))


def test_write_image_png_writes_rgb_order(tmp_path):
    pixels = np.zeros((3, 4, 3), np.uint8)
    pixels[..., 0] = 250
    path = write_image_png(tmp_path / "i.png", pixels)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), pixels)
    grey = write_image_png(tmp_path / "g.png", np.full((3, 4, 1), 7, np.uint8))
    np.testing.assert_array_equal(np.asarray(Image.open(grey)), np.full((3, 4), 7))
    with pytest.raises(DataError, match="uint8"):
        write_image_png(tmp_path / "f.png", pixels.astype(np.float32))


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = write_mask_png(tmp_path / "m.png", np.ones((2, 2), np.uint8))
    before = path.read_bytes()

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(DataError, match="disk full"):
        write_mask_png(path, np.zeros((5, 5), np.uint8))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.png"], "the temporary file must be removed"


# --------------------------------------------------------------------------- NIfTI


def save_nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_volume_slice_orientation_is_documented_display(tmp_path):
    data = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    volume = read_volume(save_nifti(tmp_path / "v.nii.gz", data))
    np.testing.assert_array_equal(volume, data)
    axial = volume_slice(volume, 1, axis=2)
    assert axial.shape == (3, 4)
    # top row = largest y (anterior), columns = x from left to right
    np.testing.assert_array_equal(axial[0], data[:, 2, 1])
    np.testing.assert_array_equal(axial[:, 0], data[0, ::-1, 1])
    assert volume_slice(volume, 0, axis=0).shape == (2, 3)


def test_volumes_stored_in_other_orientations_give_the_same_slices(tmp_path):
    ras = RNG.integers(0, 100, (4, 3, 2)).astype(np.int16)
    lps = ras[::-1, ::-1, :].copy()  # same anatomy stored left-to-right flipped
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [3, 2, 0]
    a = read_volume(save_nifti(tmp_path / "ras.nii", ras))
    b = read_volume(save_nifti(tmp_path / "lps.nii", lps, affine))
    np.testing.assert_array_equal(volume_slice(a, 1), volume_slice(b, 1))


def test_volume_shape_matches_read_volume_for_permuted_axes(tmp_path):
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    path = save_nifti(tmp_path / "p.nii.gz", np.zeros((5, 3, 2), np.uint8), swap)
    assert volume_shape(path) == read_volume(path).shape == (3, 5, 2)


def test_volumes_are_cached_by_path_and_mtime(tmp_path, monkeypatch):
    path = save_nifti(tmp_path / "v.nii.gz", np.zeros((3, 3, 4), np.float32))
    calls = []
    real_load = nib.load
    monkeypatch.setattr(nib, "load", lambda name: calls.append(name) or real_load(name))
    for index in range(4):
        volume_slice(read_volume(path), index)
    assert len(calls) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    read_volume(path)
    assert len(calls) == 2
    with pytest.raises(ValueError):
        read_volume(path)[0, 0, 0] = 1  # the cached array cannot be altered


def test_nifti_shapes_4d_and_single_slice(tmp_path):
    trailing = save_nifti(tmp_path / "t.nii", np.ones((3, 4, 2, 1), np.float32))
    assert read_volume(trailing).shape == (3, 4, 2)
    series = save_nifti(tmp_path / "s.nii", np.ones((3, 4, 2, 3), np.float32))
    with pytest.raises(DataError, match="4-D"):
        read_volume(series)
    single = save_nifti(tmp_path / "one.nii", np.arange(12, dtype=np.float32).reshape(3, 4))
    assert read_image(single).shape == (4, 3, 1)
    with pytest.raises(DataError, match="pair_folder"):
        read_image(trailing)
