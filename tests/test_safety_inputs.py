"""Safe by default (issue 12), what goes in and out: predict_eval never writes among its inputs,
weights that are code are refused, boxes files cannot name files outside the image folder.

The run folders, locks, damaged checkpoints and resume are tested in test_safety.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def medistill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medistill", *args], capture_output=True, text=True, cwd=ROOT)


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- item 2: predict_eval outputs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> dict[str, Path]:
    """4 phantoms (32 px) and an untrained tiny U-Net exported as a run folder."""
    import keras

    from medistill.cli import main
    from medistill.data.preprocess import PreprocessConfig
    from medistill.export import ModelCard, save_model_artifacts
    from medistill.networks import build_student

    root = tmp_path_factory.mktemp("tiny")
    assert main(["phantoms", "--out", str(root / "data"), "--n", "4", "--size", "32", "--seed", "0"]) == 0
    keras.utils.set_random_seed(0)
    model = build_student("unet", in_channels=1, num_classes=1, base_filters=4, depth=2)
    save_model_artifacts(model, root / "run", ModelCard(PreprocessConfig(size=32), 2))
    return {"images": root / "data" / "images", "masks": root / "data" / "masks", "run": root / "run"}


def predict_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "predict_eval.py", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("layout", ["vis_is_images", "vis_holds_images", "pred_in_masks", "out_in_images"])
def test_predict_eval_never_writes_among_its_inputs(tiny_model, tmp_path, layout):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_model["images"].parent, data)
    images, masks = data / "images", data / "masks"
    first = sorted(os.listdir(images))[0]  # an input named like an output file
    (images / "dice_distribution.png").write_bytes((images / first).read_bytes())
    (masks / "dice_distribution.png").write_bytes((masks / first).read_bytes())
    before = files_of(data)
    extra = {"vis_is_images": ["--vis_dir", str(images)],
             "vis_holds_images": ["--vis_dir", str(data)],
             "pred_in_masks": ["--vis_dir", str(tmp_path / "vis"), "--pred_dir", str(masks / "pred")],
             "out_in_images": ["--out", str(images / "metrics.csv")]}[layout]
    result = predict_eval("--image_dir", str(images), "--mask_dir", str(masks), "--model_path",
                          str(tiny_model["run"]), *extra)
    assert result.returncode == 2, result.stderr
    assert "--image_dir" in result.stderr or "--mask_dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert files_of(data) == before  # no input replaced, no file added
    assert not (tmp_path / "vis").exists()


def test_a_killed_evaluation_leaves_the_earlier_outputs_consistent(tiny_model, tmp_path, monkeypatch):
    from medistill.evaluate import predict_eval as module
    from medistill.evaluate.predict_eval import EvalConfig, predict_and_evaluate

    vis = tmp_path / "vis"
    first = EvalConfig(image_dir=str(tiny_model["images"]), mask_dir=str(tiny_model["masks"]),
                       model_path=str(tiny_model["run"]), vis_dir=str(vis), threshold=0.5)
    predict_and_evaluate(first)
    before = files_of(vis)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the run stops after the metrics, before the end

    monkeypatch.setattr(module, "plot_metric_distribution", killed)
    with pytest.raises(KeyboardInterrupt):
        predict_and_evaluate(EvalConfig(**{**first.__dict__, "threshold": 0.9}))
    assert files_of(vis) == before
    assert json.loads((vis / "eval_config.json").read_text())["threshold"] == 0.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-eval")]


# --------------------------------------------------------------------------- item 3: weights are code

MAKE_WEIGHTS = """
import os, sys
from pathlib import Path
from medistill.boxes.offline import ultralytics_session

folder = Path(sys.argv[1])
with ultralytics_session() as ultralytics:
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(folder / "pwned"),))

    torch.save({"model": Payload(), "train_args": {}}, folder / "evil.pt")
    ultralytics.YOLO("yolo11n.yaml").save(str(folder / "real.pt"))
"""


def test_a_crafted_pt_is_refused_and_a_real_one_loads(tmp_path):
    import numpy as np

    from medistill.data import write_image_png

    made = subprocess.run([sys.executable, "-c", MAKE_WEIGHTS, str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "MEDISTILL_YOLO_CONFIG_DIR": str(tmp_path / "yolo")})
    assert made.returncode == 0, made.stderr
    assert not (tmp_path / "pwned").exists()
    write_image_png(tmp_path / "images" / "a.png", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))

    def predict(weights: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "detection.py", "predict", "--weights", str(tmp_path / weights), "--image_dir",
             str(tmp_path / "images"), "--out", str(tmp_path / f"{weights}.json"), "--device", "cpu"],
            capture_output=True, text=True, cwd=ROOT,
            env={**os.environ, "MEDISTILL_YOLO_CONFIG_DIR": str(tmp_path / "yolo")})

    evil = predict("evil.pt")
    assert evil.returncode == 2, evil.stderr
    assert not (tmp_path / "pwned").exists(), "the crafted checkpoint ran code"
    assert "evil.pt" in evil.stderr and "could run any code" in evil.stderr and "Traceback" not in evil.stderr
    real = predict("real.pt")
    assert real.returncode == 0, real.stderr
    assert (tmp_path / "real.pt.json").is_file()


@pytest.fixture
def medistill_logs(caplog):
    """caplog that sees medistill's own logger (which does not propagate after setup_logging)."""
    logger = logging.getLogger("medistill")
    old = logger.propagate
    logger.propagate = True
    with caplog.at_level(logging.INFO, logger="medistill"):
        yield caplog
    logger.propagate = old


def test_a_run_folder_loads_its_keras_file_not_its_saved_model(tiny_model, medistill_logs):
    from medistill.export import load_predictor

    predictor = load_predictor(tiny_model["run"])
    assert "SavedModel is code" in medistill_logs.text and "model.keras" in medistill_logs.text
    assert predictor.predict(np.zeros((32, 32, 1), np.float32)).shape == (32, 32)


def test_a_keras_file_with_code_is_refused(tiny_model, tmp_path):
    import shutil

    import keras

    from medistill.errors import CheckpointError
    from medistill.export import load_predictor

    inputs = keras.Input((32, 32, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)  # Python bytecode inside the file
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    shutil.copy(tiny_model["run"] / "preprocessing.json", tmp_path / "preprocessing.json")
    with pytest.raises(CheckpointError, match="safe mode"):
        load_predictor(tmp_path / "model.keras")


# --------------------------------------------------------------------------- item 5: boxes file names


def boxes_document(file: str, stem: str = "a") -> dict:
    return {"format": "medistill.boxes", "version": 1, "class_names": ["lesion"], "source": {"kind": "masks"},
            "images": [{"file": file, "stem": stem, "slice": None, "width": 32, "height": 32,
                        "boxes": [{"xyxy": [2, 2, 10, 10], "score": 1.0, "class": 0}]}]}


@pytest.mark.parametrize("file, stem", [("../secret.png", "a"), ("sub/../../secret.png", "a"),
                                        ("/etc/secret.png", "a"), ("C:\\\\data\\\\a.png", "a"),
                                        ("a.png", "../a"), ("a.png", "x/y")])
def test_boxes_file_names_may_not_leave_the_image_folder(tmp_path, file, stem):
    from medistill.boxes import read_boxes
    from medistill.errors import DataError

    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(boxes_document(file, stem)))
    with pytest.raises(DataError) as info:
        read_boxes(path)
    assert "images[0]" in str(info.value) and (repr(file) in str(info.value) or repr(stem) in str(info.value))


def test_a_symlink_out_of_the_image_folder_is_refused(tmp_path):
    import numpy as np

    from medistill.boxes import check_image_paths, read_boxes
    from medistill.data import write_image_png
    from medistill.errors import DataError

    write_image_png(tmp_path / "outside" / "secret.png", np.zeros((32, 32), np.uint8))
    write_image_png(tmp_path / "images" / "b.png", np.zeros((32, 32), np.uint8))
    (tmp_path / "images" / "a.png").symlink_to(tmp_path / "outside" / "secret.png")
    (tmp_path / "boxes.json").write_text(json.dumps(boxes_document("a.png")))
    with pytest.raises(DataError, match="'a'.*outside"):
        check_image_paths(read_boxes(tmp_path / "boxes.json"), tmp_path / "images")
    (tmp_path / "boxes.json").write_text(json.dumps(boxes_document("b.png", "b")))
    check_image_paths(read_boxes(tmp_path / "boxes.json"), tmp_path / "images")  # a plain file is fine


def test_cli_teach_refuses_a_boxes_entry_outside_the_image_folder(tmp_path):
    import numpy as np

    from medistill.data import write_image_png

    write_image_png(tmp_path / "secret.png", np.zeros((32, 32), np.uint8))
    (tmp_path / "images").mkdir()
    (tmp_path / "boxes.json").write_text(json.dumps(boxes_document("../secret.png")))
    result = medistill("teach", "--image_dir", str(tmp_path / "images"), "--boxes", str(tmp_path / "boxes.json"),
                       "--teacher", "grabcut", "--out", str(tmp_path / "cache.h5"))
    assert result.returncode == 2, result.stderr
    assert "../secret.png" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "cache.h5").exists()
