"""Per-mask quality records: the pure computations, predict_more, and what build_cache writes."""

from __future__ import annotations

import doctest
import importlib.util

import h5py
import numpy as np
import pytest

from medistill.boxes.boxes_file import Box, BoxesFile, ImageBoxes, write_boxes
from medistill.data.phantoms import write_png
from medistill.errors import MedistillError
from medistill.teachers import quality as q
from medistill.teachers.base import Teacher, TeacherOutput, mask_uncertainty
from medistill.teachers.cache import CacheReader, build_cache, quality_records


def test_doctests():
    assert doctest.testmod(q).failed == 0


def test_jitter_is_seeded_bounded_and_inside():
    boxes = np.array([[0, 0, 20, 10], [30, 40, 64, 64]], np.float32)
    a = q.jitter_boxes(boxes, 0.05, 3, np.random.default_rng(q.stem_seed("x")), 64, 64)
    b = q.jitter_boxes(boxes, 0.05, 3, np.random.default_rng(q.stem_seed("x")), 64, 64)
    c = q.jitter_boxes(boxes, 0.05, 3, np.random.default_rng(q.stem_seed("y")), 64, 64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.shape == (3, 2, 4)
    size = np.array([[20, 10, 20, 10], [34, 24, 34, 24]], np.float32)
    assert np.all(np.abs(a - boxes) <= 0.05 * size + 1e-5)
    assert a.min() >= 0 and a[..., [0, 2]].max() <= 64 and np.all(a[..., 2] > a[..., 0])
    assert np.all(q.jitter_boxes(boxes, 0.0, 2, 0, 64, 64) == boxes)


def test_records_of_known_masks():
    masks = np.zeros((3, 16, 16), np.float32)
    masks[0, 2:6, 2:6] = 0.9                           # 16 px filling a quarter of an 8x8 box
    masks[1, 0:2, 10:12] = masks[1, 5:7, 14:16] = 0.7  # two fragments
    boxes = np.array([[2, 2, 10, 10], [10, 0, 16, 8], [0, 0, 4, 4]], np.float32)
    jittered = np.stack([masks, masks * 0.0])          # identical, then empty
    records = q.mask_quality(masks, boxes, np.array([0.9, 0.5, 0.1]), q.stability(masks, jittered))
    assert records[0] == q.MaskQuality(pytest.approx(0.9), 0.5, 0.25, 1, 16)
    assert records[1].components == 2 and records[1].area == 8
    assert records[2].area == 0 and records[2].stability == 1.0 and records[2].components == 0
    assert np.isnan(q.mask_quality(masks, boxes, None, None)[0].score)
    assert np.isnan(q.stability(masks, jittered[:0])).all()
    with pytest.raises(MedistillError, match="jitter"):
        q.QualitySettings(jitter=0.5)


class ShiftTeacher(Teacher):
    """A square inside each box; ``predict_more`` answers from a separate rule we control.

    ``predict`` fills the box; ``predict_more`` returns ``more_value`` inside the *left
    half* of each box, so the stability of every mask is exactly IoU(box, left half) =
    0.5 (up to pixel rounding) if, and only if, build_cache used ``predict_more``.
    """

    name = "shift"

    def __init__(self):
        self.more_calls = []

    @staticmethod
    def _fill(shape, boxes, half):
        masks = np.zeros((len(boxes),) + shape, np.float32)
        for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
            right = x1 + (x2 - x1) // 2 if half else x2
            masks[i, y1:y2, x1:right] = 0.9
        return masks

    def _predict(self, image, boxes):
        masks = self._fill(image.shape[:2], boxes, half=False)
        return TeacherOutput(masks, mask_uncertainty(masks), np.full(len(boxes), 0.7, np.float32), None, None,
                             boxes)

    def _predict_more(self, image, boxes, previous):
        self.more_calls.append(len(boxes))
        masks = self._fill(image.shape[:2], boxes, half=True)
        return TeacherOutput(masks, mask_uncertainty(masks), None, None, None, boxes)


@pytest.fixture()
def tiny_set(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for k, boxes in enumerate([[Box(4, 4, 24, 20)], [Box(2, 2, 18, 30), Box(20, 10, 30, 30)], []]):
        write_png(images / f"im{k}.png", rng.integers(0, 255, (32, 32)).astype(np.uint8))
        entries.append(ImageBoxes(f"im{k}.png", f"im{k}", 32, 32, boxes))
    write_boxes(tmp_path / "boxes.json", BoxesFile(["lesion"], entries, {"kind": "test"}))
    return images, tmp_path / "boxes.json"


def test_build_cache_writes_the_records_computed_from_predict_more(tiny_set, tmp_path):
    images, boxes_path = tiny_set
    teacher = ShiftTeacher()
    settings = q.QualitySettings(jitter=0.05, draws=3, seed=4)
    build_cache(teacher, images, boxes_path, tmp_path / "c.h5", progress=False, quality=settings)
    assert teacher.more_calls == [3, 6]  # one call per image with boxes: draws x boxes
    with CacheReader(tmp_path / "c.h5") as cache:
        assert cache.quality_settings == settings
        assert cache.stems == ["im0", "im1", "im2"] and cache.quality("im2") == []
        for stem in ("im0", "im1"):
            written = cache.quality(stem)
            entry = cache.entry(stem)
            for record in written:
                assert record.stability == pytest.approx(0.5, abs=0.1)  # left halves, from predict_more
                assert record.score == pytest.approx(0.7) and record.fill == pytest.approx(1.0)
                assert record.components == 1
            # the record written is the one computed (same seeded draws)
            from medistill.data.io import read_image

            image = read_image(images / f"{stem}.png")
            again = quality_records(ShiftTeacher(), image, ShiftTeacher().predict(image, entry.boxes), stem, settings)
            assert written == again
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["images/im1/quality/stability"].shape == (2,)
        assert f["images/im1/quality/area"][()].tolist() == [16 * 28, 10 * 20]


def test_stability_off_and_default_predict_more(tiny_set, tmp_path):
    images, boxes_path = tiny_set

    class PlainShift(ShiftTeacher):
        _predict_more = Teacher._predict_more  # the default: predict again

    build_cache(PlainShift(), images, boxes_path, tmp_path / "a.h5", progress=False)
    build_cache(ShiftTeacher(), images, boxes_path, tmp_path / "b.h5", progress=False,
                quality=q.QualitySettings(draws=0))
    with CacheReader(tmp_path / "a.h5") as a, CacheReader(tmp_path / "b.h5") as b:
        assert all(r.stability > 0.8 for r in a.quality("im1"))  # full boxes, slightly jittered
        assert all(np.isnan(r.stability) for r in b.quality("im1"))
    with pytest.raises(MedistillError, match="quality"):  # other settings: stale
        build_cache(ShiftTeacher(), images, boxes_path, tmp_path / "b.h5", progress=False)


def test_predict_more_checks_the_image(tiny_set):
    teacher = ShiftTeacher()
    out = teacher.predict(np.zeros((32, 32)), [[1, 1, 10, 10]])
    with pytest.raises(MedistillError, match="same image"):
        teacher.predict_more(np.zeros((16, 32)), [[1, 1, 10, 10]], out)
    more = teacher.predict_more(np.zeros((32, 32)), [[-3, 1, 10, 10]], out)
    assert more.boxes.tolist() == [[0, 1, 10, 10]]


def _image(height=40, width=56):
    rng = np.random.default_rng(3)
    image = rng.normal(100, 10, (height, width)).astype(np.float32)
    image[10:25, 15:35] += 120
    return image


def _check_decoder_only(teacher, monkeypatch):
    image = _image()
    boxes = np.array([[14, 9, 36, 26], [2, 2, 20, 20]], np.float32)
    out = teacher.predict(image, boxes[:1])
    extra = boxes + np.array([1, -1, 2, 1], np.float32)
    expected = teacher.predict(image, extra)

    def no_encoder(*_args, **_kwargs):
        raise AssertionError("predict_more ran the image encoder")

    monkeypatch.setattr(teacher, "encode", no_encoder)
    more = teacher.predict_more(image, extra, out)
    np.testing.assert_allclose(more.masks, expected.masks, atol=1e-5)
    np.testing.assert_allclose(more.scores, expected.scores, atol=1e-5)
    records = quality_records(teacher, image, out, "s", q.QualitySettings(jitter=0.05, draws=2))
    assert len(records) == 1 and 0.0 <= records[0].stability <= 1.0


@pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None, reason="keras-hub is not installed")
def test_sam_predict_more_reuses_the_embedding(monkeypatch):
    from medistill.teachers.sam import SAMTeacher, build_tiny_sam

    _check_decoder_only(SAMTeacher(build_tiny_sam(64), source="tiny-sam:64", compiled=False), monkeypatch)


def test_litemedsam_predict_more_reuses_the_embedding(monkeypatch):
    from medistill.teachers.litemedsam.teacher import LiteMedSAMTeacher

    try:
        teacher = LiteMedSAMTeacher(compiled=False)
    except MedistillError as error:  # no bundled checkpoint on this machine
        pytest.skip(str(error))
    _check_decoder_only(teacher, monkeypatch)


def test_reader_features(tiny_set, tmp_path):
    images, boxes_path = tiny_set

    class WithFeatures(ShiftTeacher):
        def _predict(self, image, boxes):
            out = super()._predict(image, boxes)
            out.features, out.feature_stride = np.full((4, 4, 2), 0.25, np.float32), 8
            return out

    build_cache(WithFeatures(), images, boxes_path, tmp_path / "f.h5", progress=False, storage="full")
    with CacheReader(tmp_path / "f.h5") as cache:
        assert cache.feature_info("im1") == ((4, 4, 2), 8)
        entry = cache.entry("im1")
        assert entry.features.dtype == np.float16 and entry.features.shape == (4, 4, 2)
        assert entry.feature_stride == 8 and cache.entry("im1", features=False).features is None
        np.testing.assert_allclose(entry.scores, [0.7, 0.7])
