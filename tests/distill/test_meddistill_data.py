"""MedDistill's data: the student frame, negatives, the split, the tf.data pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from medistill.boxes.boxes_file import read_boxes, write_boxes
from medistill.distill.colearn import boxes_in_teacher_frame
from medistill.boxes.oracle import boxes_from_masks
from medistill.data.phantoms import generate_phantoms
from medistill.data.preprocess import Geometry, PreprocessConfig, preprocess_image
from medistill.distill.meddistill import data as md
from medistill.errors import MedistillError
from medistill.teachers.base import Teacher, TeacherOutput, mask_uncertainty
from medistill.teachers.cache import build_cache


class BoxFeatureTeacher(Teacher):
    """A fast deterministic teacher with features: 0.8 inside each box, pooled-intensity features.

    Features: ``(16, 16, 2)`` over a 64-pixel padded square (stride 4): the image min-max
    scaled, longest side to 64, padded, 4×4-averaged; and a constant 0.5 channel.
    """

    name = "box-features"

    def _predict(self, image, boxes):
        height, width = image.shape[:2]
        masks = np.zeros((len(boxes), height, width), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
            masks[i, y1:y2, x1:x2] = 0.8
        x, _ = preprocess_image(image, PreprocessConfig(size=64))
        pooled = x[..., 0].reshape(16, 4, 16, 4).mean(axis=(1, 3))
        features = np.stack([pooled, np.full_like(pooled, 0.5)], axis=-1)
        return TeacherOutput(masks, mask_uncertainty(masks), None, features, 4, boxes)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """10 phantoms at 64 px (one without a lesion), oracle boxes, a cache of BoxFeatureTeacher."""
    root = tmp_path_factory.mktemp("md_data")
    generate_phantoms(root / "ph", 10, size=64, seed=0)
    boxes_path = root / "boxes.json"
    write_boxes(boxes_path, boxes_from_masks(root / "ph" / "masks", root / "ph" / "images"))
    # full: these tests read the features and co-learn embeddings as the teacher computed them
    build_cache(BoxFeatureTeacher(), root / "ph" / "images", boxes_path, root / "cache.h5", progress=False,
                storage="full")
    return {"images": root / "ph" / "images", "boxes": boxes_path, "cache": root / "cache.h5"}


def test_soft_mask_lands_where_the_image_does():
    """A soft mask resampled like the image: identical to preprocessing it as an image."""
    rng = np.random.default_rng(0)
    soft = rng.random((30, 50)).astype(np.float32)
    soft[0, 0], soft[-1, -1] = 0.0, 1.0  # min-max keeps the values
    for size in (32, 128):  # shrinking (area) and enlarging (bilinear)
        x, geometry = preprocess_image(soft, PreprocessConfig(size=size))
        framed = md.soft_mask_to_frame(soft, geometry, size)
        assert framed.shape == (size, size)
        np.testing.assert_allclose(framed, x[..., 0], atol=1e-6)
        assert not framed[geometry.resized_height:].any()  # padding at the bottom stays 0


def test_soft_mask_of_the_wrong_size_is_refused():
    with pytest.raises(MedistillError, match="rebuild the teacher cache"):
        md.soft_mask_to_frame(np.zeros((10, 10)), Geometry.for_size(12, 10, 32), 32)


def test_features_land_on_the_student_grid():
    """The whole teacher map covers the whole student square: positions and padding line up."""
    # A LiteMedSAM-like map: 64 x 64 cells of stride 4 over the 256 frame, each holding
    # the relative position of its centre.
    centres = (np.arange(64) + 0.5) / 64
    teacher = np.stack(np.meshgrid(centres, centres, indexing="xy"), axis=-1).astype(np.float32)
    student = md.features_to_grid(teacher, 16).astype(np.float32)  # a stride-4 feature of a 64 px student
    expected = (np.arange(16) + 0.5) / 16
    np.testing.assert_allclose(student[0, :, 0], expected, atol=1e-3)   # x along a row
    np.testing.assert_allclose(student[:, 0, 1], expected, atol=1e-3)   # y down a column
    enlarged = md.features_to_grid(teacher, 128).astype(np.float32)
    np.testing.assert_allclose(enlarged[5, 1:-1, 0], ((np.arange(128) + 0.5) / 128)[1:-1], atol=1e-3)

    # A 100 x 200 image: the teacher (256 frame) fills rows 0..127, feature rows 0..31;
    # the 64 px student fills rows 0..31, i.e. rows 0..7 of its 16-cell grid.
    assert Geometry.for_size(100, 200, 256).resized_height == 128
    assert Geometry.for_size(100, 200, 64).resized_height == 32
    content = np.zeros((64, 64, 1), np.float32)
    content[:32] = 1.0
    on_grid = md.features_to_grid(content, 16)[..., 0]
    assert on_grid.dtype == np.float16
    assert np.all(on_grid[:8] == 1.0) and np.all(on_grid[8:] == 0.0)


def test_boxes_go_to_the_256_frame_as_the_teacher_scales_them():
    boxes = boxes_in_teacher_frame(np.array([[10, 12.5, 30, 40]]), height=64, width=50)
    np.testing.assert_array_equal(boxes, [[40, 50, 120, 160]])  # x 256/64, truncated


def test_negatives_are_kept_with_zero_targets(cached):
    boxes = read_boxes(cached["boxes"])
    train, val = md.split_entries(boxes, cached["images"], 0.0, seed=0)
    assert val == [] and len(train) == 10
    data = md.load_from_cache(cached["cache"], cached["images"], train, PreprocessConfig(size=32), grid=8)
    assert data.negatives == 1
    negative = int(np.flatnonzero(data.n_boxes == 0)[0])
    assert not data.soft[negative].any() and data.uncertainty[negative] == 0.0
    positive = int(np.flatnonzero(data.n_boxes > 0)[0])
    assert data.soft[positive].max() == pytest.approx(0.8) and data.uncertainty[positive] > 0
    assert data.images.shape == (10, 32, 32, 1) and data.soft.shape == (10, 32, 32)
    assert data.features.shape == (10, 8, 8, 2) and data.features.dtype == np.float16
    # The soft mask sits over its box in the student frame (64 px phantoms, half size).
    entry = train[positive]
    x1, y1, x2, y2 = (int(v) // 2 for v in entry.boxes[0].xyxy)
    assert data.soft[positive, (y1 + y2) // 2, (x1 + x2) // 2] == pytest.approx(0.8)


def test_skip_empty_drops_the_negatives_from_training(cached):
    train, _ = md.split_entries(read_boxes(cached["boxes"]), cached["images"], 0.0, seed=0)
    kept = md.drop_empty(train)
    assert len(kept) == 9 and all(e.boxes for e in kept)
    with pytest.raises(MedistillError, match="skip-empty"):
        md.drop_empty([e for e in train if not e.boxes])


def test_split_is_deterministic_disjoint_and_complete(cached):
    boxes = read_boxes(cached["boxes"])
    train, val = md.split_entries(boxes, cached["images"], 0.3, seed=4)
    again_train, again_val = md.split_entries(boxes, cached["images"], 0.3, seed=4)
    assert [e.stem for e in train] == [e.stem for e in again_train]
    assert [e.stem for e in val] == [e.stem for e in again_val]
    assert len(val) == 3 and not {e.stem for e in train} & {e.stem for e in val}
    assert {e.stem for e in train + val} == {e.stem for e in boxes.images}
    other = {e.stem for seed in range(1, 6) for e in md.split_entries(boxes, cached["images"], 0.3, seed)[1]}
    assert other != {e.stem for e in val}  # the seed matters


def test_training_batches_flip_image_soft_mask_and_features_together(cached):
    train, _ = md.split_entries(read_boxes(cached["boxes"]), cached["images"], 0.0, seed=0)
    data = md.load_from_cache(cached["cache"], cached["images"], train, PreprocessConfig(size=32), grid=8)
    shape = data.features.shape[1:]
    batch = next(iter(md.training_dataset(data, 10, epoch=3, seed=7, augment=True, drop_remainder=False,
                                          feature_shape=shape)))
    order, flips = md.epoch_plan(10, epoch=3, seed=7, shuffle=True, augment=True)
    assert flips.any() and not flips.all()
    np.testing.assert_array_equal(batch["flip"].numpy(), flips)
    for i, (index, flip) in enumerate(zip(order, flips)):
        np.testing.assert_array_equal(batch["image"][i].numpy(), md.flip_maps(data.images[index], flip))
        np.testing.assert_array_equal(batch["soft"][i].numpy(), md.flip_maps(data.soft[index], flip))
        np.testing.assert_array_equal(batch["features"][i].numpy(), md.flip_maps(data.features[index], flip))
        assert batch["uncertainty"][i].numpy() == data.uncertainty[index]
    again = next(iter(md.training_dataset(data, 10, epoch=3, seed=7, augment=True, drop_remainder=False,
                                          feature_shape=shape)))
    np.testing.assert_array_equal(again["image"].numpy(), batch["image"].numpy())
    other_order, _ = md.epoch_plan(10, epoch=4, seed=7, shuffle=True, augment=True)
    assert not np.array_equal(other_order, order)  # every epoch its own order
    dropped = list(md.training_dataset(data, 4, epoch=0, seed=7, augment=False))
    assert [len(b["image"]) for b in dropped] == [4, 4]  # drop_remainder for training


def test_co_learn_inputs_are_padded_boxes_in_the_teacher_frame(cached):
    train, _ = md.split_entries(read_boxes(cached["boxes"]), cached["images"], 0.0, seed=0)
    data = md.load_from_cache(cached["cache"], cached["images"], train, PreprocessConfig(size=32),
                              grid=None, co_learn=True)
    most = max(len(e.boxes) for e in train)
    assert data.boxes.shape == (10, most, 4) and data.valid.shape == (10, most)
    np.testing.assert_array_equal(data.valid.sum(axis=1), [len(e.boxes) for e in train])
    assert data.embeddings.shape == (10, 16, 16, 2) and data.embeddings.dtype == np.float16
    first = next(i for i, e in enumerate(train) if e.boxes)
    expected = np.trunc(np.array(train[first].boxes[0].xyxy) * 256 / 64)
    np.testing.assert_array_equal(data.boxes[first, 0], expected)
    batch = next(iter(md.training_dataset(data, 2, epoch=0, seed=0, augment=True)))
    assert set(batch) == {"image", "soft", "uncertainty", "flip", "embeddings", "boxes", "valid",
                          "rows", "cols", "box_weights", "inside", "weight"}


def test_features_present_for_some_images_only_are_refused(cached, tmp_path):
    import shutil

    import h5py

    copy = tmp_path / "cache.h5"
    shutil.copy(cached["cache"], copy)
    with h5py.File(copy, "a") as handle:
        stem = sorted(handle["images"])[0]
        del handle[f"images/{stem}/features"]
        stems = list(handle["images"])
    with pytest.raises(MedistillError, match="differ in presence or shape"):
        md.cache_feature_info(copy, stems)
    info = md.cache_feature_info(cached["cache"], stems)
    assert info == md.FeatureInfo((16, 16, 2), 4)
