"""Safe by default (issue 12): --overwrite, locks, damaged checkpoints, resume.

What goes in and out (predict_eval's outputs, weights that are code, boxes file names):
test_safety_inputs.py.
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
