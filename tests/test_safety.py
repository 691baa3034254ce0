"""Safe by default (issue 12): --overwrite, locks, damaged checkpoints, weights that are code."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medistill.errors import MedistillError
from medistill.locking import LOCK_NAME, LockedError, acquire_lock, release_lock
from medistill.train.config import TrainConfig
from medistill.train.run_folder import (
    CONFIG_NAME,
    prepare_run_folder,
    release_run_folder,
    repair_checkpoints,
)

ROOT = Path(__file__).resolve().parents[1]


def medistill(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medistill", *args], capture_output=True, text=True,
                          cwd=ROOT, **kwargs)


def user_folder(path: Path) -> Path:
    """A folder of a user's own files (not a medistill run)."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "scans").mkdir()
    (path / "scans" / "a.png").write_bytes(b"not really a png")
    return path


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- item 1: --overwrite


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    folder = user_folder(tmp_path / "mine")
    before = files_of(folder)
    with pytest.raises(MedistillError) as info:
        prepare_run_folder(TrainConfig(data="d", out=str(folder), overwrite=True), TrainConfig)
    assert str(folder) in str(info.value) and "not a medistill run" in str(info.value)
    assert files_of(folder) == before


def test_overwrite_refuses_a_run_of_another_command(tmp_path):
    from medistill.distill.meddistill.config import MedDistillConfig

    run = tmp_path / "md"
    md = MedDistillConfig(image_dir="i", boxes="b.json", out=str(run))
    prepare_run_folder(md, MedDistillConfig)
    release_run_folder(run)
    before = files_of(run)
    with pytest.raises(MedistillError) as info:
        prepare_run_folder(TrainConfig(data="d", out=str(run), overwrite=True), TrainConfig)
    assert "meddistill" in str(info.value) and "medistill train" in str(info.value)
    assert files_of(run) == before


def test_overwrite_refuses_an_old_run_of_another_command_without_marker(tmp_path):
    from medistill.distill.config import DistillConfig

    run = tmp_path / "old"
    run.mkdir()
    config = DistillConfig(data="d", out=str(run), recipe="kamsd", teacher_model="t")
    (run / CONFIG_NAME).write_text(json.dumps(config.to_dict()))
    with pytest.raises(MedistillError, match="medistill distill"):
        prepare_run_folder(TrainConfig(data="d", out=str(run), overwrite=True), TrainConfig)
    assert (run / CONFIG_NAME).is_file()


def test_overwrite_replaces_a_run_of_the_same_command(tmp_path):
    run = tmp_path / "run"
    prepare_run_folder(TrainConfig(data="d", out=str(run)), TrainConfig)
    release_run_folder(run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "ckpt-1.index").write_bytes(b"x")
    assert not prepare_run_folder(TrainConfig(data="d", out=str(run), lr=0.5, overwrite=True), TrainConfig)
    release_run_folder(run)
    assert not (run / "checkpoints").exists()
    assert json.loads((run / CONFIG_NAME).read_text())["lr"] == 0.5


def test_cli_train_overwrite_leaves_a_user_folder_alone(tmp_path):
    folder = user_folder(tmp_path / "mine")
    before = files_of(folder)
    result = medistill("train", "--data", str(tmp_path / "no-data"), "--out", str(folder), "--overwrite")
    assert result.returncode == 2, result.stderr
    assert str(folder) in result.stderr and "Traceback" not in result.stderr
    assert files_of(folder) == before


# --------------------------------------------------------------------------- item 4: locks


@pytest.fixture
def live_pid():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder: Path, pid: int) -> None:
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, live_pid):
    run = tmp_path / "run"
    write_lock(run, live_pid)
    with pytest.raises(LockedError) as info:
        prepare_run_folder(TrainConfig(data="d", out=str(run), overwrite=True), TrainConfig)
    message = str(info.value)
    assert f"PID {live_pid}" in message and str(run) in message
    assert "--overwrite" not in message
    assert not (run / CONFIG_NAME).exists()


def test_a_stale_lock_is_taken_over_with_a_log_line(tmp_path, caplog):
    run = tmp_path / "run"
    pid = dead_pid()
    write_lock(run, pid)
    with caplog.at_level(logging.WARNING, logger="medistill"):
        logging.getLogger("medistill").propagate = True
        try:
            prepare_run_folder(TrainConfig(data="d", out=str(run)), TrainConfig)
        finally:
            logging.getLogger("medistill").propagate = False
    assert f"PID {pid}" in caplog.text and "no longer runs" in caplog.text
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    release_run_folder(run)
    assert not (run / LOCK_NAME).exists()


def test_the_lock_is_released_when_the_run_log_closes(tmp_path):
    from medistill.train.run_folder import add_file_log

    run = tmp_path / "run"
    prepare_run_folder(TrainConfig(data="d", out=str(run)), TrainConfig)
    assert (run / LOCK_NAME).exists()
    handler = add_file_log(run)
    logging.getLogger("medistill").removeHandler(handler)
    handler.close()
    assert not (run / LOCK_NAME).exists()


def test_lock_is_reentrant_for_its_holder(tmp_path):
    path = tmp_path / "x" / LOCK_NAME
    acquire_lock(path, what="x")
    acquire_lock(path, what="x")
    release_lock(path)
    assert not path.exists()


def test_cli_second_writer_is_refused(tmp_path, live_pid):
    run = tmp_path / "run"
    write_lock(run, live_pid)
    result = medistill("train", "--data", str(tmp_path / "no-data"), "--out", str(run))
    assert result.returncode == 2
    assert f"PID {live_pid}" in result.stderr and "--overwrite" not in result.stderr


# --------------------------------------------------------------------------- item 6: damaged checkpoints


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    import tensorflow as tf

    folder = tmp_path / "checkpoints"
    value = tf.Variable(tf.zeros((64, 64)))
    checkpoint = tf.train.Checkpoint(value=value)
    manager = tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=2)
    for number in (1, 2):
        value.assign(tf.fill((64, 64), float(number)))
        manager.save(checkpoint_number=number)
    data = next(folder.glob("ckpt-2.data-*"))
    data.write_bytes(data.read_bytes()[:100])  # killed while the disk was full, say
    with caplog.at_level(logging.WARNING, logger="medistill"):
        logging.getLogger("medistill").propagate = True
        try:
            good = repair_checkpoints(folder)
        finally:
            logging.getLogger("medistill").propagate = False
    assert Path(good).name == "ckpt-1"
    assert "ckpt-2" in caplog.text and "previous checkpoint" in caplog.text
    assert tf.train.latest_checkpoint(str(folder)).endswith("ckpt-1")
    assert tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=2).latest_checkpoint.endswith("ckpt-1")
    checkpoint.restore(tf.train.latest_checkpoint(str(folder))).assert_existing_objects_matched()
    assert float(value[0, 0]) == 1.0


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    import tensorflow as tf

    folder = tmp_path / "checkpoints"
    checkpoint = tf.train.Checkpoint(value=tf.Variable(tf.zeros((64, 64))))
    tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=2).save(checkpoint_number=1)
    data = next(folder.glob("ckpt-1.data-*"))
    data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(MedistillError, match="ckpt-1"):
        repair_checkpoints(folder)


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


# --------------------------------------------------------------------------- item 10: resume == no kill


def test_a_resumed_supervised_run_is_the_uninterrupted_run(tmp_path):
    import pandas as pd

    from medistill.cli import main

    data = tmp_path / "data"
    assert main(["phantoms", "--out", str(data), "--n", "8", "--size", "32", "--seed", "0"]) == 0
    common = ["--data", str(data), "--img-size", "32", "--batch", "2", "--schedule", "constant", "--seed", "3",
              "--student-options", '{"base_filters": 4, "depth": 2}']
    assert main(["train", *common, "--out", str(tmp_path / "whole"), "--epochs", "3"]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "cut"), "--epochs", "1"]) == 0  # "killed" after epoch 1
    assert main(["train", *common, "--out", str(tmp_path / "cut"), "--epochs", "3"]) == 0  # the same command again
    whole = pd.read_csv(tmp_path / "whole" / "history.csv")
    cut = pd.read_csv(tmp_path / "cut" / "history.csv")
    assert len(whole) == len(cut) == 3
    columns = ["loss", "val_loss", "val_dice"]
    np.testing.assert_allclose(cut[columns].to_numpy(), whole[columns].to_numpy(), rtol=1e-5, atol=1e-6)


def test_a_lock_of_a_zombie_or_a_reused_pid_is_stale():
    from medistill.locking import holder_alive, process_start

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    import time

    for _ in range(100):  # exited but not reaped: a zombie
        if Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            break
        time.sleep(0.05)
    assert not holder_alive({"pid": process.pid})
    process.wait()
    me = os.getpid()
    assert holder_alive({"pid": me, "started": process_start(me)})
    assert not holder_alive({"pid": me, "started": process_start(me) + 1})  # the PID was reused


def test_a_detector_run_folder_is_locked_too(tmp_path, live_pid):
    from medistill.boxes.detector import DetectorTrainConfig, train_detector
    from medistill.cli import main

    assert main(["phantoms", "--out", str(tmp_path / "ph"), "--n", "4", "--size", "32", "--seed", "0"]) == 0
    assert main(["yolodata", "--data", str(tmp_path / "ph"), "--out", str(tmp_path / "yolo"),
                 "--split", "0.5", "0.5", "0"]) == 0
    run = tmp_path / "det"
    write_lock(run, live_pid)
    (run / "args.yaml").write_text("epochs: 1\n")  # a run being written by that process
    with pytest.raises(LockedError, match=f"PID {live_pid}") as info:
        train_detector(DetectorTrainConfig(data=str(tmp_path / "yolo" / "data.yaml"), out=str(run),
                                           overwrite=True))
    assert "--overwrite" not in str(info.value)
    assert (run / "args.yaml").is_file()  # --overwrite did not delete the live run


def test_a_run_from_before_the_marker_is_recognised_by_its_settings(tmp_path):
    from medistill.distill.meddistill.config import MedDistillConfig
    from medistill.train.run_folder import run_kind

    run = tmp_path / "old"
    run.mkdir()
    saved = MedDistillConfig(image_dir="i", boxes="b.json", out=str(run)).to_dict()
    saved.pop("seed")  # an older version with fewer settings
    (run / CONFIG_NAME).write_text(json.dumps(saved))
    assert run_kind(run) == "MedDistillConfig"
    (run / CONFIG_NAME).write_text(json.dumps(TrainConfig(data="d", out=str(run)).to_dict()))
    assert run_kind(run) == "TrainConfig"
    (run / CONFIG_NAME).write_text(json.dumps({"data": "d", "something": 1}))
    assert run_kind(run) is None


def test_a_detector_run_stopped_before_its_first_epoch_starts_again(tmp_path):
    from medistill.boxes.detector import _prepare_run_folder

    run = tmp_path / "det"
    (run / "weights").mkdir(parents=True)
    (run / "args.yaml").write_text("epochs: 3\n")  # what ultralytics writes as it starts
    assert _prepare_run_folder(run, overwrite=False) is None
    assert not run.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "args.yaml").write_text("my own")
    (mine / "paper.tex").write_text("keep")
    with pytest.raises(MedistillError, match="no run to resume"):
        _prepare_run_folder(mine, overwrite=False)
    assert (mine / "paper.tex").is_file() and (mine / "args.yaml").is_file()
