"""KAMSD, CAKD+MSKD and SIKD as whole ``python -m medistill distill`` runs in fresh
processes: two logical CPU devices (binary and 3-class, teachers trained first or
saved), a two-worker cluster on localhost, and a resume after ``kill -9``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from medistill.data.phantoms import generate_phantoms, write_png
from medistill.distill.teacher import load_teacher
from medistill.export import load_predictor
from medistill.networks import build_student

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = {"base_filters": 4, "depth": 2}
COMMON = ["--img-size", "64", "--batch", "4", "--steps-per-epoch", "1", "--seed", "0"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def medistill(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "medistill", *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=600, env=ENV)
    assert result.returncode == 0, f"medistill {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Binary phantoms, a 3-class set (background, brain with lesions, CSF) and a saved
    untrained tiny 3-class deep-supervision teacher; 64 px, 8 images each."""
    root = tmp_path_factory.mktemp("distributed")
    generate_phantoms(root / "binary", 8, size=64, seed=0)
    generate_phantoms(root / "four", 8, size=64, seed=1, multiclass=True)
    for folder in ("images", "masks"):
        (root / "three" / folder).mkdir(parents=True)
    for image in sorted((root / "four" / "images").glob("*.png")):
        (root / "three" / "images" / image.name).write_bytes(image.read_bytes())
        labels = cv2.imread(str(root / "four" / "masks" / image.name), cv2.IMREAD_UNCHANGED)
        write_png(root / "three" / "masks" / image.name, np.where(labels == 3, 1, labels).astype(np.uint8))
    build_student("unet", in_channels=1, num_classes=3, deep_supervision=True, **TINY).save(root / "teacher3.keras")
    return root


def distill_args(recipe: str, data_dir: Path, out: Path, teacher: Path | None = None, epochs: int = 1) -> list[str]:
    """The command line; without ``teacher`` the run trains its teacher (tiny U-Net, 1 epoch)."""
    student = {"channels": [4, 8, 8]} if recipe == "cakd-mskd" else TINY
    source = (["--teacher-model", str(teacher)] if teacher else
              ["--train-teacher", "unet", "--teacher-epochs", "1", "--teacher-options", json.dumps(TINY)])
    return ["distill", "--recipe", recipe, "--data", str(data_dir), "--out", str(out),
            "--student-options", json.dumps(student), *source, "--epochs", str(epochs), *COMMON]


def check_export(run: Path, recipe: str, classes: int, replicas: int) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["recipe"], summary["replicas"], summary["num_classes"]) == (recipe, replicas, classes)
    for name in ("config.json", "model.keras", "preprocessing.json", "history.csv", "curves.png", "train.log"):
        assert (run / name).exists(), name
    probabilities = load_predictor(run / "saved_model").predict(np.full((64, 64, 1), 80.0, "float32"))
    assert probabilities.shape == ((64, 64) if classes == 2 else (64, 64, classes))


def test_kamsd_trains_its_teacher_then_distils_on_two_devices(data, tmp_path):
    run = tmp_path / "run"
    result = medistill(*distill_args("kamsd", data / "binary", run), "--cpu-replicas", "2")
    assert "MirroredStrategy with 2 replica(s)" in result.stderr
    check_export(run, "kamsd", 2, 2)
    check_export(run / "teacher", "deep-supervised-teacher", 2, 2)
    history = pd.read_csv(run / "history.csv")
    assert {"loss", "deep_supervision", "boundary", "adapter", "output_kd", "val_dice"} <= set(history.columns)
    teacher_config = json.loads((run / "teacher" / "config.json").read_text())
    assert teacher_config["student_options"] == {"deep_supervision": True, **TINY}
    # deep supervision trained the teacher's coarse head too: it left its initial weights
    keras.utils.set_random_seed(0)
    initial = build_student("unet", in_channels=1, num_classes=1, deep_supervision=True, **TINY)
    trained = load_teacher(run / "teacher")
    assert not np.allclose(initial.get_layer("aux1").get_weights()[0], trained.get_layer("aux1").get_weights()[0])
    # the exported student is the student alone: the adapters and boundary heads stay behind
    names = {layer.name for layer in keras.saving.load_model(run / "model.keras").layers}
    assert "enc1" in names and not any(n.startswith(("adapter", "boundary")) for n in names)


def test_sikd_three_classes_on_two_devices_with_its_averaged_image_teacher(data, tmp_path):
    run = tmp_path / "run"
    medistill(*distill_args("sikd", data / "three", run), "--cpu-replicas", "2")
    check_export(run, "sikd", 3, 2)
    check_export(run / "teacher", "sikd-teacher", 3, 2)
    assert {"ce", "feature"} <= set(pd.read_csv(run / "history.csv").columns)
    # same network as the student: the teacher got the student's options
    assert json.loads((run / "teacher" / "config.json").read_text())["student_options"] == TINY


def test_cakd_mskd_three_classes_on_two_devices_resumes_after_kill(data, tmp_path):
    run = tmp_path / "run"
    args = [*distill_args("cakd-mskd", data / "three", run, data / "teacher3.keras", epochs=100),
            "--cpu-replicas", "2"]
    process = subprocess.Popen([sys.executable, "-m", "medistill", *args], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 400
        # two rows: the first epoch's checkpoint is surely written (history.csv goes first)
        while not ((run / "history.csv").exists() and len(pd.read_csv(run / "history.csv")) >= 2):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the run did not finish two epochs in time"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    before = pd.read_csv(run / "history.csv")
    assert 2 <= len(before) < 100 and not (run / "model.keras").exists()
    args[args.index("--epochs") + 1] = str(len(before) + 1)   # a shorter run resumes the same checkpoint
    result = medistill(*args)
    # a kill between history.csv and the checkpoint costs that one epoch, never more
    done = int(re.search(r"(\d+) epoch\(s\) already done", result.stderr).group(1))
    assert len(before) - 1 <= done <= len(before)
    after = pd.read_csv(run / "history.csv")
    assert after["epoch"].tolist() == list(range(1, len(before) + 2))
    pd.testing.assert_frame_equal(after.iloc[:done].reset_index(drop=True), before.iloc[:done])
    assert {"ds_dice", "cakd", "mskd"} <= set(after.columns)
    check_export(run, "cakd-mskd", 3, 2)


def test_two_workers_train_the_teacher_then_distil_to_identical_weights(data, tmp_path, run_workers,
                                                                         read_worker_weights):
    run = tmp_path / "run"
    results = run_workers(distill_args("sikd", data / "binary", run))
    assert "CollectiveAllReduceStrategy with 2 replica(s)" in results[0].stderr   # MultiWorkerMirrored
    first, second = read_worker_weights(run_workers.weights_dir)
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    check_export(run, "sikd", 2, 2)
    assert (run / "teacher" / "model.keras").exists()
    # both parents passed the barrier that waits for every teacher child to exit
    assert {p.name for p in run.glob(".teacher-children-exited-*")} == {
        ".teacher-children-exited-worker-0", ".teacher-children-exited-worker-1"}
