"""Exports (ONNX, OpenVINO, LiteRT) and their runtimes: same probabilities as Keras, no TensorFlow.

Tolerance: probabilities within PARITY_ATOL (1e-4) of the Keras predictor's on real
nuclei images; float32 runtimes reorder sums, measured differences are ~1e-6. Masks are
identical wherever the Keras probability is further than that from the threshold.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medistill.data.io import read_image, read_mask_values
from medistill.errors import CheckpointError, MedistillError
from medistill.export import CARD_NAME, load_predictor
from medistill.predict.backends import FORMATS, open_predictor
from medistill.predict.engine import predict_probabilities
from medistill.predict.exporter import export_model

PARITY_ATOL = 1e-4
REPO_ROOT = Path(__file__).resolve().parents[2]
BACKENDS = [fmt.backend for fmt in FORMATS.values()]
FORMATS_BY_BACKEND = {fmt.backend: fmt for fmt in FORMATS.values()}


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the trained run with all three exports in RUN/exports/."""
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained_run, run)
    for fmt in FORMATS:
        export_model(run, fmt)
    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_gives_the_keras_probabilities_on_real_images(exported_run, nuclei_tiles, backend):
    images = [t.image[..., None].astype(np.float32) for t in nuclei_tiles[-8:]]
    keras_probs = predict_probabilities(load_predictor(exported_run), images, batch=3)
    runtime = open_predictor(exported_run, backend)
    assert runtime.source == exported_run / "exports" / FORMATS_BY_BACKEND[backend].file_name
    assert type(runtime._forward).__module__ == "medistill.predict.backends"  # the runtime, not a Keras model
    for expected, got in zip(keras_probs, predict_probabilities(runtime, images, batch=3)):
        np.testing.assert_allclose(got, expected, atol=PARITY_ATOL)
        sure = np.abs(expected - 0.5) > PARITY_ATOL
        np.testing.assert_array_equal(runtime.labels(got)[sure], runtime.labels(expected)[sure])
    assert max(float(np.mean(p > 0.5)) for p in keras_probs) > 0.05, "a student that predicts nothing proves little"


def test_exports_sit_beside_the_model_card(exported_run):
    exports = exported_run / "exports"
    assert {p.name for p in exports.iterdir()} == {"model.onnx", "model.xml", "model.bin", "model.tflite", CARD_NAME}
    assert json.loads((exports / CARD_NAME).read_text()) == json.loads((exported_run / CARD_NAME).read_text())


@pytest.mark.parametrize("backend", BACKENDS)
def test_runtime_backends_predict_without_importing_tensorflow(exported_run, image_folder, tmp_path, backend):
    script = (
        "import argparse, json, sys\n"
        "from medistill.cli import COMMANDS, run_command, predict\n"
        "parser = argparse.ArgumentParser(); predict.add_arguments(parser)\n"
        "status = run_command(COMMANDS['predict'][0], parser.parse_args(sys.argv[1:]))\n"
        "print(json.dumps({'status': status, 'loaded': sorted(m for m in sys.modules\n"
        "                  if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))}))\n")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", script, "--model", str(exported_run), "--backend", backend,
                             "-i", str(image_folder), "-o", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"status": 0, "loaded": []}, result.stderr[-2000:]
    keras = load_predictor(exported_run)
    for path in sorted(image_folder.glob("*.png")):
        prob = keras.predict(read_image(path))
        sure = np.abs(prob - 0.5) > PARITY_ATOL
        mask = read_mask_values(out / path.name)
        np.testing.assert_array_equal(mask[sure], np.where(prob[sure] > 0.5, 255, 0))
    assert "compiled" in result.stderr and "stranger" in result.stderr  # the warning about foreign graphs


def test_an_export_is_not_replaced_without_overwrite_and_goes_only_where_its_card_fits(exported_run, tmp_path):
    target = exported_run / "exports" / "model.onnx"
    before = target.read_bytes()
    with pytest.raises(MedistillError, match="--overwrite"):
        export_model(exported_run, "onnx")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model.bin").write_bytes(b"mine")  # an OpenVINO export there would replace it
    with pytest.raises(MedistillError, match="model.bin exists"):
        export_model(exported_run, "openvino", out=tmp_path / "x" / "model.xml")
    assert (tmp_path / "x" / "model.bin").read_bytes() == b"mine"
    with pytest.raises(MedistillError, match=r"\.tflite"):
        export_model(exported_run, "litert", out=tmp_path / "model.onnx")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CARD_NAME).write_text('{"preprocess": {"size": 512}, "num_classes": 3}')
    with pytest.raises(MedistillError, match="another model"):
        export_model(exported_run, "onnx", out=tmp_path / "other" / "model.onnx")
    assert target.read_bytes() == before and not (tmp_path / "other" / "model.onnx").exists()


def test_a_damaged_or_mismatched_export_is_refused(exported_run, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    shutil.copy(exported_run / CARD_NAME, damaged / CARD_NAME)
    (damaged / "model.onnx").write_bytes(b"\x00 not a graph")
    with pytest.raises(CheckpointError, match="cannot load"):
        open_predictor(damaged / "model.onnx")
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    shutil.copy(exported_run / "exports" / "model.tflite", mismatched / "model.tflite")
    card = json.loads((exported_run / CARD_NAME).read_text())
    card["preprocess"]["size"] = 64
    (mismatched / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="another model"):
        open_predictor(mismatched / "model.tflite")
    with pytest.raises(CheckpointError, match="runs on --backend onnxruntime"):
        open_predictor(exported_run / "exports" / "model.onnx", "litert")


def test_loading_an_exported_graph_warns_that_it_is_code(exported_run, caplog):
    logger = logging.getLogger("medistill")
    propagate, logger.propagate = logger.propagate, True
    try:
        with caplog.at_level(logging.WARNING, logger="medistill"):
            open_predictor(exported_run / "exports" / "model.xml")
    finally:
        logger.propagate = propagate
    assert "Load only files that you or medistill exported" in caplog.text


def _cpu_has_bf16() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_openvino_in_bf16_computes_in_bf16_and_keeps_the_masks_within_tolerance(exported_run, nuclei_tiles,
                                                                                  caplog):
    images = [t.image[..., None].astype(np.float32) for t in nuclei_tiles[-8:]]
    keras_probs = predict_probabilities(load_predictor(exported_run), images, batch=3)
    with caplog.at_level(logging.WARNING, logger="medistill"):
        runtime = open_predictor(exported_run, "openvino", "bf16")
    hint = runtime._forward._model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert hint == ("bf16" if _cpu_has_bf16() else "f32"), hint  # the option reached the compiled model
    assert ("no bf16 units" in caplog.text) == (not _cpu_has_bf16())  # a CPU without them is said, not hidden
    fp32 = open_predictor(exported_run, "openvino")._forward._model
    assert fp32.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    probs = predict_probabilities(runtime, images, batch=3)
    differing = sum(int((runtime.labels(p) != runtime.labels(e)).sum()) for p, e in zip(probs, keras_probs))
    assert differing <= 5e-3 * sum(p.size for p in keras_probs)  # README, "Use your model": 99.5 % of the pixels
    assert max(float(np.abs(p - e).max()) for p, e in zip(probs, keras_probs)) < 0.1


def test_a_lower_precision_is_refused_where_the_runtime_has_none_and_never_mixed_into_a_folder(
        exported_run, image_folder, tmp_path):
    from medistill.predict.folder import PredictConfig, predict_folder

    out = tmp_path / "out"
    for backend in ("keras", "onnxruntime", "litert"):
        with pytest.raises(MedistillError, match=f"--precision bf16 runs only with --backend openvino, not {backend}"):
            PredictConfig(model=str(exported_run), inputs=str(image_folder), out=str(out), backend=backend,
                          precision="bf16")
        with pytest.raises(MedistillError, match="runs only with --backend openvino"):
            open_predictor(exported_run, backend, "bf16")
    assert not out.exists()
    predict_folder(PredictConfig(model=str(exported_run), inputs=str(image_folder), out=str(out),
                                 backend="openvino"))
    with pytest.raises(MedistillError, match="other settings"):
        predict_folder(PredictConfig(model=str(exported_run), inputs=str(image_folder), out=str(out),
                                     backend="openvino", precision="bf16"))
