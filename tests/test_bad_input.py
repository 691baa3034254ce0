"""Bad input from a user: every case exits 2 with a message naming the option or file,
no traceback, and nothing written outside (or, for a refused start, inside) ``--out``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--img-size", "32", "--batch", "2", "--student-options", '{"base_filters": 4, "depth": 2}',
        "--seed", "0"]


def medistill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medistill", *args], capture_output=True, text=True, cwd=ROOT)


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """``medistill ARGS`` run in this process (faster than a new one: TensorFlow is loaded once)."""
    from medistill.cli import main

    import logging

    capsys.readouterr()
    try:
        code = main(list(args))
    finally:  # the console handler writes to this test's captured stderr: drop it afterwards
        logger = logging.getLogger("medistill")
        for handler in [h for h in logger.handlers if getattr(h, "_medistill_console", False)]:
            logger.removeHandler(handler)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def refused(result: subprocess.CompletedProcess, *named: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in named:
        assert text in result.stderr, (text, result.stderr[-3000:])


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input") / "ph"
    result = medistill("phantoms", "--out", str(root), "--n", "6", "--size", "32", "--seed", "0")
    assert result.returncode == 0, result.stderr
    return root


# --------------------------------------------------------------------------- student options and sizes


@pytest.mark.parametrize("options, size, named", [
    ('{"depth": 0}', "32", ["--student-options", "'depth'"]),
    ('{"base_filters": "8"}', "32", ["--student-options", "'base_filters'", "'8'"]),
    ('{"depth": 5}', "48", ["--img-size 48", "32"]),
    ('{"depth": 2, "dropout": "high"}', "32", ["'dropout'"]),
    ('[4, 2]', "32", ["--student-options"]),
])
def test_train_refuses_bad_student_options_before_writing(phantoms, tmp_path, capsys, options, size, named):
    run = tmp_path / "run"
    refused(in_process(capsys, "train", "--data", str(phantoms), "--out", str(run), "--img-size", size,
                      "--student-options", options), *named)
    assert not run.exists()


def test_meddistill_refuses_bad_student_options_before_writing(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "meddistill.py", "--image_dir", str(tmp_path), "--boxes",
                             str(tmp_path / "b.json"), "--out", str(run), "--student", "unet",
                             "--student-options", '{"depth": 0}'], capture_output=True, text=True, cwd=ROOT)
    refused(result, "'depth'")
    assert not run.exists()


def test_distill_refuses_a_size_the_default_student_cannot_take(phantoms, tmp_path, capsys):
    run = tmp_path / "run"
    refused(in_process(capsys, "distill", "--recipe", "cakd-mskd", "--data", str(phantoms), "--out", str(run),
                      "--teacher-model", str(tmp_path / "t"), "--img-size", "40"), "--img-size 40", "lcovnet")
    assert not run.exists()


# --------------------------------------------------------------------------- resume


def test_a_truncated_checkpoint_resumes_from_the_previous_one(phantoms, tmp_path):
    run = tmp_path / "run"
    first = medistill("train", "--data", str(phantoms), "--out", str(run), "--epochs", "2", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    data = next((run / "checkpoints").glob("ckpt-2.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    again = medistill("train", "--data", str(phantoms), "--out", str(run), "--epochs", "3", *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ckpt-2 is damaged" in again.stderr and "previous checkpoint ckpt-1" in again.stderr
    assert "1 epoch(s) already done" in again.stderr
    assert (run / "checkpoints" / "damaged").is_dir()


# --------------------------------------------------------------------------- a failed start writes nothing


def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    refused(in_process(capsys, "train", "--data", str(tmp_path / "no-such-data"), "--out", str(run), *TINY),
            str(tmp_path / "no-such-data"))
    assert not run.exists()


def test_a_start_that_failed_after_writing_does_not_block_the_corrected_command(tmp_path):
    from medistill.train.config import TrainConfig
    from medistill.train.run_folder import prepare_run_folder, release_run_folder

    run = tmp_path / "run"
    prepare_run_folder(TrainConfig(data=str(tmp_path / "typo"), out=str(run)), TrainConfig)  # then it failed
    release_run_folder(run)
    assert not prepare_run_folder(TrainConfig(data=str(tmp_path / "data"), out=str(run)), TrainConfig)
    release_run_folder(run)


# --------------------------------------------------------------------------- surprising masks


def relabel(phantoms: Path, target: Path, value: int | None) -> Path:
    """A copy of ``phantoms`` whose foreground is ``value`` (None: every mask empty)."""
    import shutil

    import numpy as np

    from medistill.data import read_mask, write_mask_png

    shutil.copytree(phantoms, target)
    for path in (target / "masks").glob("*.png"):
        mask = read_mask(path)
        write_mask_png(path, np.zeros_like(mask) if value is None else (mask > 0) * value)
    return target


def test_sparse_label_values_need_an_explicit_mask_mode(phantoms, tmp_path, capsys):
    data = relabel(phantoms, tmp_path / "data", 10)
    run = tmp_path / "run"
    refused(in_process(capsys, "train", "--data", str(data), "--out", str(run), *TINY),
            "[10]", "--mask-mode binary", "11-class")
    assert not run.exists()


def test_sparse_labels_counted_when_asked(phantoms, tmp_path):
    from medistill.data import pair_folder
    from medistill.train.data_setup import count_classes

    data = relabel(phantoms, tmp_path / "data", 10)
    samples = pair_folder(data / "images", data / "masks")
    assert count_classes(samples, "binary") == 2
    assert count_classes(samples, "labels") == 11


def test_all_empty_masks_warn(phantoms, tmp_path, caplog):
    import logging

    from medistill.data import pair_folder
    from medistill.train.data_setup import count_classes

    data = relabel(phantoms, tmp_path / "data", None)
    logging.getLogger("medistill").propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="medistill"):
            assert count_classes(pair_folder(data / "images", data / "masks")) == 2
    finally:
        logging.getLogger("medistill").propagate = False
    assert "every mask" in caplog.text and "empty" in caplog.text


def test_a_one_image_set_warns_that_validation_is_off(phantoms, tmp_path, caplog):
    import logging
    import shutil

    from medistill.train.data_setup import training_samples

    data = tmp_path / "one"
    for folder in ("images", "masks"):
        (data / folder).mkdir(parents=True)
        first = sorted((phantoms / folder).iterdir())[0]
        shutil.copy(first, data / folder / first.name)
    logging.getLogger("medistill").propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="medistill"):
            train, val = training_samples(data, val_fraction=0.2)
    finally:
        logging.getLogger("medistill").propagate = False
    assert (len(train), len(val)) == (1, 0)
    assert "validation is off" in caplog.text and str(data) in caplog.text


# --------------------------------------------------------------------------- --overwrite of every trainer


def user_files(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("command", ["train", "distill", "meddistill"])
def test_overwrite_never_deletes_a_folder_that_is_not_a_run(phantoms, tmp_path, capsys, command):
    folder = tmp_path / "mine"
    before = user_files(folder)
    args = {"train": ["train", "--data", str(phantoms), *TINY],
            "distill": ["distill", "--recipe", "kamsd", "--data", str(phantoms), "--train-teacher", "unet",
                        *TINY, "--teacher-options", '{"base_filters": 4, "depth": 2}'],
            "meddistill": ["meddistill", "--image_dir", str(phantoms / "images"), "--boxes",
                           str(tmp_path / "boxes.json"), *TINY, "--student", "unet"]}[command]
    refused(in_process(capsys, *args, "--out", str(folder), "--overwrite"), str(folder), "not a medistill run")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_distill_with_bad_data_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    refused(in_process(capsys, "distill", "--recipe", "kamsd", "--data", str(tmp_path / "nothing"), "--out", str(run),
                       "--train-teacher", "unet", *TINY), str(tmp_path / "nothing"))
    assert not run.exists()


# --------------------------------------------------------------------------- already handled: the catalogue


def snapshot(root: Path, skip: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if skip not in (p, *p.parents)}


@pytest.mark.parametrize("case", ["missing-model", "threshold", "epochs", "batch", "teach-boxes",
                                  "meddistill-boxes", "yolodata-images", "student-name", "val-fraction"])
def test_already_handled_bad_input(phantoms, tmp_path, capsys, case):
    out = tmp_path / "out"
    images = str(phantoms / "images")
    argv, named = {
        "missing-model": (["evaluate", "--image_dir", images, "--model_path", str(tmp_path / "nope"),
                           "--vis_dir", str(out)], [str(tmp_path / "nope")]),
        "threshold": (["evaluate", "--image_dir", images, "--model_path", str(tmp_path / "nope"),
                       "--threshold", "1.5", "--vis_dir", str(out)], ["--threshold"]),
        "epochs": (["train", "--data", str(phantoms), "--out", str(out), "--epochs", "0"], ["--epochs"]),
        "batch": (["train", "--data", str(phantoms), "--out", str(out), "--batch", "0"], ["--batch"]),
        "teach-boxes": (["teach", "--image_dir", images, "--boxes", str(tmp_path / "b.json"), "--teacher",
                         "grabcut", "--out", str(out / "c.h5")], [str(tmp_path / "b.json")]),
        "meddistill-boxes": (["meddistill", "--image_dir", images, "--boxes", str(tmp_path / "b.json"),
                              "--out", str(out), *TINY, "--student", "unet"], [str(tmp_path / "b.json")]),
        "yolodata-images": (["yolodata", "--image_dir", str(tmp_path / "none"), "--mask_dir", str(tmp_path / "none"),
                             "--out", str(out)], [str(tmp_path / "none")]),
        "student-name": (["train", "--data", str(phantoms), "--out", str(out), "--student", "unet3"],
                         ["unet3"]),
        "val-fraction": (["train", "--data", str(phantoms), "--out", str(out), "--val-fraction", "1.5"],
                         ["--val-fraction"]),
    }[case]
    before = snapshot(tmp_path, out)
    refused(in_process(capsys, *argv), *named)
    assert snapshot(tmp_path, out) == before  # nothing written outside --out
    if case != "meddistill-boxes":  # MedDistill reads its boxes file after opening RUN (a failed start
        assert not out.exists()     # there may be restarted with other settings)
