"""phantoms → train → predict_eval, the resume after kill -9, and two replicas."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def medistill(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "medistill", *args], capture_output=True, text=True,
                            cwd=ROOT, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"medistill {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    medistill("phantoms", "--out", str(root / "train"), "--n", "64", "--size", "64", "--seed", "0")
    medistill("phantoms", "--out", str(root / "test"), "--n", "16", "--size", "64", "--seed", "1")
    return {"train": root / "train", "test": root / "test"}


TRAIN_ARGS = ["--student", "unet", "--student-options", '{"base_filters": 16}', "--img-size", "64",
              "--batch", "8", "--lr", "3e-3", "--no-augment", "--seed", "0"]


@pytest.fixture(scope="module")
def trained_run(phantoms, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "unet"
    medistill("train", "--data", str(phantoms["train"]), "--out", str(run), "--epochs", "13", *TRAIN_ARGS)
    return run


def test_train_writes_a_complete_run_folder(trained_run):
    for name in ("config.json", "preprocessing.json", "model.keras", "saved_model/saved_model.pb",
                 "history.csv", "curves.png", "train.log", "summary.json", "best.weights.h5"):
        assert (trained_run / name).exists(), name
    history = pd.read_csv(trained_run / "history.csv")
    assert {"epoch", "loss", "val_loss", "val_dice", "lr"} <= set(history.columns)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    card = json.loads((trained_run / "preprocessing.json").read_text())
    assert card["num_classes"] == 2 and card["activation"] == "sigmoid"
    assert card["preprocess"]["size"] == 64
    assert any((trained_run / "tensorboard").iterdir())
    summary = json.loads((trained_run / "summary.json").read_text())
    # ~51 training images at batch 8 are 6 steps: the small set repeats to reach 10 per epoch.
    assert summary["passes_per_epoch"] == 2
    assert summary["steps_per_epoch"] == 2 * summary["train_images"] // 8 >= 10


def test_predict_eval_beats_chance(trained_run, phantoms, tmp_path):
    vis = tmp_path / "vis"
    result = subprocess.run(
        [sys.executable, "predict_eval.py", "--image_dir", str(phantoms["test"] / "images"),
         "--mask_dir", str(phantoms["test"] / "masks"), "--model_path", str(trained_run),
         "--vis_dir", str(vis), "--num_vis", "3"],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "dice" in result.stdout
    table = pd.read_csv(vis / "metrics.csv")
    assert len(table) == 16
    assert {"image", "case", "dice", "iou", "hd95", "assd", "sensitivity", "specificity", "precision"} <= set(table.columns)
    summary = json.loads((vis / "metrics.json").read_text())["summary"]
    assert summary
    # Chance: a mask with the right foreground fraction placed at random scores about
    # that fraction; lesions cover a few per cent of a phantom.
    normal = table[table["case"] == "normal"]
    assert len(normal) >= 4
    assert normal["dice"].mean() > 0.3, table
    assert len(list((vis / "predictions").glob("*.png"))) == 16
    assert (vis / "dice_distribution.png").exists()
    assert len([p for p in vis.glob("*.png") if p.name != "dice_distribution.png"]) == 3


def test_saved_model_and_keras_file_predict_the_same(trained_run, phantoms):
    from medistill.data import load_sample, pair_folder
    from medistill.export import load_predictor

    sample = pair_folder(phantoms["test"] / "images", phantoms["test"] / "masks")[0]
    image, _ = load_sample(sample)
    from_run = load_predictor(trained_run).predict(image)
    from_keras = load_predictor(trained_run / "model.keras").predict(image)
    from_saved = load_predictor(trained_run / "saved_model").predict(image)
    assert from_run.shape == image.shape[:2]
    np.testing.assert_allclose(from_keras, from_saved, atol=1e-5)
    np.testing.assert_allclose(from_run, from_keras, atol=1e-6)


def test_predict_only_writes_masks(trained_run, phantoms, tmp_path):
    result = medistill("evaluate", "--image_dir", str(phantoms["test"] / "images"),
                       "--model_path", str(trained_run / "saved_model"), "--pred_dir", str(tmp_path / "pred"),
                       "--vis_dir", str(tmp_path / "vis"), "--num_vis", "0")
    masks = sorted((tmp_path / "pred").glob("*.png"))
    assert len(masks) == 16
    assert not (tmp_path / "vis" / "metrics.csv").exists()
    assert "per-image metrics" not in result.stdout


def test_resume_after_kill_keeps_finished_epochs(phantoms, tmp_path, wait_for_epochs):
    run = tmp_path / "resumed"
    args = [sys.executable, "-m", "medistill", "train", "--data", str(phantoms["train"]), "--out", str(run),
            "--epochs", "4", *TRAIN_ARGS]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_for_epochs(run, 2, process)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    before = pd.read_csv(run / "history.csv")
    assert len(before) < 4
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # history.csv is written just before the epoch's checkpoint: a kill between the two
    # loses that one epoch (it is trained again), never more.
    resumed = re.search(r"(\d+) epoch\(s\) already done", result.stderr)
    done = int(resumed.group(1)) if resumed else 0      # no checkpoint yet: a fresh start
    assert len(before) - 1 <= done <= len(before)
    after = pd.read_csv(run / "history.csv")
    assert after["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(after.iloc[:done].reset_index(drop=True), before.iloc[:done])
    assert (run / "model.keras").exists()


def test_rerunning_a_finished_run_changes_nothing(trained_run, phantoms):
    before = (trained_run / "history.csv").read_text()
    result = medistill("train", "--data", str(phantoms["train"]), "--out", str(trained_run),
                       "--epochs", "13", *TRAIN_ARGS)
    assert "already complete" in result.stderr
    assert (trained_run / "history.csv").read_text() == before


def test_other_settings_in_the_same_folder_are_refused(trained_run, phantoms):
    result = medistill("train", "--data", str(phantoms["train"]), "--out", str(trained_run),
                       "--epochs", "13", *TRAIN_ARGS[:-2], "--seed", "5", check=False)
    assert result.returncode == 2
    assert "seed" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_cpu_replicas_train_and_export(phantoms, tmp_path):
    run = tmp_path / "mirrored"
    result = medistill("train", "--data", str(phantoms["train"]), "--out", str(run), "--epochs", "1",
                       "--cpu-replicas", "2", *TRAIN_ARGS)
    assert "MirroredStrategy with 2 replica(s)" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["replicas"] == 2
    assert (run / "saved_model" / "saved_model.pb").exists()


def test_bad_data_folder_gives_a_clear_error(tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        cv2.imwrite(str(tmp_path / "masks" / f"{stem}.png"), np.zeros((16, 16), np.uint8))
    cv2.imwrite(str(tmp_path / "images" / "b.png"), np.zeros((16, 16), np.uint8))
    (tmp_path / "images" / "a.png").write_bytes(b"not a png")
    result = medistill("train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), check=False)
    assert result.returncode == 2
    assert "a.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_multiclass_phantoms_train_and_evaluate_per_class(tmp_path):
    data = tmp_path / "multi"
    medistill("phantoms", "--out", str(data), "--n", "20", "--size", "64", "--seed", "3", "--multiclass")
    run = tmp_path / "run"
    medistill("train", "--data", str(data), "--out", str(run), "--epochs", "2", *TRAIN_ARGS)
    card = json.loads((run / "preprocessing.json").read_text())
    assert card["num_classes"] == 4 and card["activation"] == "softmax"
    vis = tmp_path / "vis"
    medistill("evaluate", "--image_dir", str(data / "images"), "--mask_dir", str(data / "masks"),
              "--model_path", str(run), "--vis_dir", str(vis), "--num_vis", "1")
    table = pd.read_csv(vis / "metrics.csv")
    assert {"dice_c1", "dice_c2", "dice_c3", "case_c1"} <= set(table.columns)
    import cv2

    predicted = cv2.imread(str(next((vis / "predictions").glob("*.png"))), cv2.IMREAD_UNCHANGED)
    assert predicted.shape == (64, 64) and set(np.unique(predicted)) <= {0, 1, 2, 3}
    # Brain tissue (class 1) covers much of each phantom: even two epochs find some of it.
    assert table["dice_c1"].mean() > 0.2
