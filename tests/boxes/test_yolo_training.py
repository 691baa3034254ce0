"""A real from-scratch YOLO on blob images: train, predict, eval, fine-tune, offline.

ultralytics runs in subprocesses: the test process may already hold TensorFlow (other
test modules import it) and the detector commands are meant to run in a process of
their own. One subprocess runs every command under a network audit hook.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medistill.boxes import read_boxes
from medistill.cli import main
from medistill.data import read_image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EPOCHS = 20
# 20 epochs rank boxes well (mAP50 ~0.9) but scores are still low; real runs train longer.
CONF = "0.05"

pytestmark = pytest.mark.slow


def environment(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(tmp / "cache")  # a fresh settings folder: fonts copied anew
    env.pop("MEDISTILL_YOLO_CONFIG_DIR", None)
    env.pop("YOLO_CONFIG_DIR", None)
    env.pop("YOLO_OFFLINE", None)  # a user types nothing special
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def session(tmp_path_factory, blob_writer):
    tmp = tmp_path_factory.mktemp("yolo")
    blob_writer(tmp / "blobs", 64, size=64, seed=0)
    assert main(["yolodata", "--data", str(tmp / "blobs"), "--out", str(tmp / "yolo")]) == 0
    data, run, tuned = tmp / "yolo" / "data.yaml", tmp / "run", tmp / "tuned"
    corrupt = tmp / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    best = run / "weights" / "best.pt"
    commands = [
        ["detect", "train", "--data", str(data), "--model", "yolo11n.yaml", "--epochs", str(EPOCHS),
         "--imgsz", "64", "--out", str(run)],
        ["detect", "predict", "--weights", str(best), "--image_dir", str(tmp / "yolo" / "images" / "test"),
         "--out", str(tmp / "boxes.json"), "--conf", CONF],
        ["detect", "eval", "--weights", str(best), "--data", str(data), "--out", str(tmp / "metrics.json"),
         "--conf", CONF],
        ["detect", "train", "--data", str(data), "--model", str(best), "--epochs", "1", "--imgsz", "64",
         "--out", str(tuned)],
        ["detect", "train", "--data", str(data), "--epochs", "1", "--imgsz", "64", "--out", str(run)],
        ["detect", "predict", "--weights", str(corrupt), "--image_dir", str(tmp / "blobs" / "images"),
         "--out", str(tmp / "never.json")],
    ]
    (tmp / "commands.json").write_text(json.dumps(commands))
    work = tmp / "cwd"
    work.mkdir()
    done = subprocess.run([sys.executable, str(HERE / "offline_session.py"), str(tmp / "commands.json"),
                           str(tmp / "report.json")], cwd=work, env=environment(tmp),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp / "report.json").read_text())
    return {"tmp": tmp, "report": report, "stderr": done.stderr, "run": run, "tuned": tuned,
            "best": best, "work": work}


def test_commands_ran_offline_and_gave_back_threads(session):
    report = session["report"]
    statuses = [run["status"] for run in report["runs"]]
    assert statuses == [0, 0, 0, 0, 2, 2], session["stderr"][-4000:]
    assert report["network"] == []
    assert not report["tensorflow_loaded"]
    start = report["threads_at_start"]
    assert all(run["threads_after"] == start for run in report["runs"])
    assert "finished run" in session["stderr"] and "cannot load the weights" in session["stderr"]
    assert not (session["work"] / "runs").exists()  # ultralytics wrote nothing in the cwd
    fonts = session["tmp"] / "cache" / "medistill" / "ultralytics" / "Ultralytics"
    assert (fonts / "Arial.ttf").is_file() and (fonts / "Arial.Unicode.ttf").is_file()
    settings = json.loads((fonts / "settings.json").read_text())
    assert settings["sync"] is False and settings["tensorboard"] is False


def test_trained_detector_learns_and_its_boxes_load(session):
    record = json.loads((session["run"] / "medistill_detector.json").read_text())
    assert record["ultralytics_args"]["mosaic"] == 0.0 and record["ultralytics_args"]["nbs"] == 8
    assert record["ultralytics_args"]["pretrained"] is False
    metrics = json.loads((session["tmp"] / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 6
    assert metrics["map50"] > 0.3 and metrics["box_recall"] > 0.3, metrics
    boxes = read_boxes(session["tmp"] / "boxes.json")
    test_stems = sorted(p.stem for p in (session["tmp"] / "yolo" / "images" / "test").glob("*.png"))
    assert [entry.stem for entry in boxes.images] == test_stems
    assert boxes.class_names == ["foreground"] and boxes.source["kind"] == "detector"
    assert boxes.num_boxes > 0
    for entry in boxes.images:
        assert (entry.width, entry.height) == (64, 64)
        for box in entry.boxes:
            assert 0 <= box.x1 < box.x2 <= 64 and 0 <= box.y1 < box.y2 <= 64 and 0.05 <= box.score <= 1


def test_fine_tuning_from_a_local_checkpoint(session):
    record = json.loads((session["tuned"] / "medistill_detector.json").read_text())
    assert record["ultralytics_args"]["pretrained"] is True
    assert record["settings"]["model"] == str(session["best"])
    assert (session["tuned"] / "weights" / "best.pt").is_file()


def test_detector_works_after_tensorflow_was_imported(session):
    # import order tensorflow → torchvision crashes the process unless medistill blocks triton.
    # The folder also holds a NIfTI volume: its slices are listed as <stem>_z<index>.
    folder = session["tmp"] / "mixed"
    folder.mkdir()
    test_images = sorted((session["tmp"] / "yolo" / "images" / "test").glob("*.png"))
    shutil.copy2(test_images[0], folder / test_images[0].name)
    volume = np.stack([read_image(path)[..., 0] * 10.0 for path in test_images[:3]], axis=-1)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(folder / "vol.nii.gz"))
    script = (
        "import tensorflow, json, sys\n"
        "from medistill.boxes import write_boxes\n"
        "from medistill.boxes.detector import predict_boxes\n"
        f"boxes = predict_boxes({str(session['best'])!r}, {str(folder)!r}, conf=0.05)\n"
        f"write_boxes({str(session['tmp'] / 'mixed.json')!r}, boxes)\n"
        "print(json.dumps({'tf': float(tensorflow.reduce_sum(tensorflow.ones(2)))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=session["work"],
                          env=environment(session["tmp"]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"tf": 2.0}
    boxes = read_boxes(session["tmp"] / "mixed.json")
    listed = [(entry.file, entry.stem, entry.slice_index) for entry in boxes.images]
    assert listed == [(test_images[0].name, test_images[0].stem, None),
                      ("vol.nii.gz", "vol_z000", 0), ("vol.nii.gz", "vol_z001", 1),
                      ("vol.nii.gz", "vol_z002", 2)]
