"""keras-hub SAM teacher: tiny config round trip through a local preset, box geometry, errors.

The interface contract (shapes, ranges, clipped and empty boxes) is checked for
``tiny-sam`` by the shared, parametrised ``test_teacher_contract`` in
``test_teacher_contract.py``.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

if importlib.util.find_spec("keras_hub") is None:
    pytest.skip("keras-hub is not installed", allow_module_level=True)

from medistill.errors import MedistillError  # noqa: E402
from medistill.teachers.registry import available_teachers, build_teacher  # noqa: E402
from medistill.teachers.sam import (  # noqa: E402
    SAMTeacher,
    build_tiny_sam,
    preprocess_image,
    scale_boxes,
)


def _image(height: int = 50, width: int = 80) -> np.ndarray:
    rng = np.random.default_rng(1)
    image = rng.normal(300, 40, (height, width)).astype(np.float32)
    image[10:30, 20:50] += 500
    return image


@pytest.fixture(scope="module")
def tiny_segmenter():
    return build_tiny_sam(64, seed=0)


def test_registered_names():
    assert {"sam", "tiny-sam"} <= set(available_teachers())


def test_local_preset_round_trip_gives_the_same_masks(tiny_segmenter, tmp_path):
    preset = tmp_path / "tiny_sam_preset"
    tiny_segmenter.save_to_preset(str(preset))
    loaded = build_teacher(f"sam:{preset}")
    in_memory = SAMTeacher(tiny_segmenter, source="memory", compiled=False)
    assert loaded.weights_hash == in_memory.weights_hash
    assert loaded.image_size == 64 and loaded.preprocessing["scale"] == pytest.approx([1 / 255.0] * 3)
    boxes = np.array([[18, 8, 52, 32], [0, 0, 80, 50], [60, 30, 79, 49]], np.float32)
    expected, got = in_memory.predict(_image(), boxes), loaded.predict(_image(), boxes)
    np.testing.assert_allclose(got.masks, expected.masks, atol=1e-5)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
    np.testing.assert_allclose(got.features, expected.features, atol=1e-5)
    assert got.features.shape == (4, 4, 8) and got.feature_stride == 16


def test_tiny_sam_is_reproducible(tiny_segmenter):
    assert SAMTeacher(build_tiny_sam(64, seed=0), "a").weights_hash == \
        SAMTeacher(tiny_segmenter, "b").weights_hash


def test_boxes_are_batched_like_single_boxes(tiny_segmenter):
    teacher = SAMTeacher(tiny_segmenter, source="memory", box_batch=2)
    boxes = np.array([[18, 8, 52, 32], [0, 0, 80, 50], [60, 30, 79, 49]], np.float32)
    together = teacher.predict(_image(), boxes)
    for i, box in enumerate(boxes):
        alone = teacher.predict(_image(), box[None])
        np.testing.assert_allclose(alone.masks[0], together.masks[i], atol=1e-5)
    # the mask follows the box: the decoder sees SAM's (N, 1, 2, 2) corner layout
    assert together.extras["low_res_logits"].shape == (3, 16, 16)


def test_preprocessing_geometry():
    x, geometry = preprocess_image(_image(50, 80)[..., None], 64, np.full(3, 1 / 255.0, np.float32),
                                   np.zeros(3, np.float32))
    assert x.shape == (64, 64, 3) and (geometry.resized_height, geometry.resized_width) == (40, 64)
    assert x[:40].min() >= 0 and 0.5 < x[:40].max() <= 1.0  # min-max before the (averaging) resize
    np.testing.assert_allclose(x[40:], np.broadcast_to([0.485, 0.456, 0.406], (24, 64, 3)))
    corners = scale_boxes(np.array([[10, 5, 80, 50]]), geometry)
    np.testing.assert_allclose(corners, [[[[8, 4], [64, 40]]]])


def test_missing_preset_is_a_clear_error_without_hanging(tmp_path):
    for spec in (f"sam:{tmp_path / 'nowhere'}", f"sam:{tmp_path}"):
        with pytest.raises(MedistillError, match="(?s)local preset directory.*internet"):
            build_teacher(spec)
    with pytest.raises(MedistillError, match="needs a preset"):
        build_teacher("sam")
    with pytest.raises(MedistillError, match="image size"):
        build_teacher("tiny-sam:big")


def test_unreachable_named_preset_is_a_clear_error(monkeypatch):
    import keras_hub

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.SAMImageSegmenter, "from_preset", offline)
    start = time.perf_counter()
    with pytest.raises(MedistillError, match="(?s)sam_base_sa1b.*ConnectionError.*local preset directory.*internet"):
        build_teacher("sam:sam_base_sa1b")
    with pytest.raises(MedistillError, match="(?s)ConnectionError.*local preset directory"):
        build_teacher("sam:kaggle://keras/sam/keras/sam_base_sa1b/5")  # a handle, not a folder
    assert time.perf_counter() - start < 5


def test_many_boxes_decode_without_crashing_the_process():
    """keras-hub's SAM decoder corrupts memory with 12+ boxes at once here; chunks of 8 do not.

    In a child process: a crash there fails this test instead of killing the test run.
    """
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from medistill.teachers.sam import SAMTeacher, build_tiny_sam\n"
            "t = SAMTeacher(build_tiny_sam(), source='tiny', box_batch=32)\n"
            "assert t.box_batch == 8\n"
            "img = np.random.default_rng(0).random((64, 64)).astype(np.float32)\n"
            "boxes = np.tile(np.array([[10, 10, 30, 30], [5, 40, 20, 60], [40, 40, 60, 50]], np.float32), (8, 1))\n"
            "out = t.predict(img, boxes[:3])\n"
            "for _ in range(5):\n"
            "    assert t.predict_more(img, boxes, out).masks.shape == (24, 64, 64)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
