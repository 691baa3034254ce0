"""Bad input to the detector commands: clear errors, found before ultralytics is loaded.

These run in the test process: none of them may import torch or ultralytics (the
training tests run those in subprocesses, see test_yolo_training.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medistill.boxes.detector import (
    RUN_RECORD,
    _prepare_run_folder,
    check_data_yaml,
    check_model_spec,
    label_path_for,
)
from medistill.cli import main
from medistill.errors import CheckpointError, DataError, MedistillError


@pytest.fixture
def yolo_set(two_blob_set: Path, tmp_path: Path) -> Path:
    out = tmp_path / "yolo"
    assert main(["yolodata", "--data", str(two_blob_set), "--out", str(out)]) == 0
    return out


def test_data_yaml_checks(yolo_set: Path, tmp_path: Path):
    info = check_data_yaml(yolo_set / "data.yaml")
    assert info.class_names == ["foreground"] and set(info.splits) == {"train", "val", "test"}
    assert info.images("train") + info.images("val") + info.images("test") == 3
    with pytest.raises(DataError, match="does not exist .*Creat_yolodata"):
        check_data_yaml(tmp_path / "missing.yaml")
    nowhere = tmp_path / "nowhere.yaml"
    nowhere.write_text("train: /no/such/folder\nval: images/val\nnames: {0: a}\n")
    with pytest.raises(DataError, match="the train images /no/such/folder do not exist"):
        check_data_yaml(nowhere)
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "data.yaml").write_text("train: images/train\nval: images/train\nnames: {0: a}\n")
    with pytest.raises(DataError, match="holds no images"):
        check_data_yaml(empty / "data.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(DataError, match="not a readable YAML"):
        check_data_yaml(broken)
    no_val = tmp_path / "noval.yaml"
    no_val.write_text("train: images/train\nnames: {0: a}\n")
    with pytest.raises(DataError, match="'train' and 'val'"):
        check_data_yaml(no_val)


def test_model_spec_checks(tmp_path: Path):
    assert check_model_spec("yolo11n.yaml") == "yolo11n.yaml"
    assert check_model_spec("yolov8s.yaml") == "yolov8s.yaml"
    with pytest.raises(CheckpointError, match="never downloads"):
        check_model_spec("yolo11n.pt")  # a hub name, not a local file
    with pytest.raises(MedistillError, match="neither a local file"):
        check_model_spec("nonsense9z.yaml")
    with pytest.raises(MedistillError, match="give a local .pt"):
        check_model_spec("resnet50")


def test_cli_errors_without_tracebacks(yolo_set: Path, tmp_path: Path, capsys):
    weights = tmp_path / "run" / "weights" / "best.pt"
    assert main(["detect", "predict", "--weights", str(weights), "--image_dir",
                 str(yolo_set / "images" / "train"), "--out", str(tmp_path / "b.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["detect", "eval", "--weights", str(weights), "--data", str(yolo_set / "data.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["detect", "train", "--data", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    assert main(["detect", "train", "--data", str(yolo_set / "data.yaml"), "--out", str(tmp_path / "r"),
                 "--model", "yolo11n.pt"]) == 2
    assert "never downloads" in capsys.readouterr().err
    assert main(["detect", "train", "--data", str(yolo_set / "data.yaml"), "--out", str(tmp_path / "r"),
                 "--imgsz", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["detect", "train", "--data", str(yolo_set / "data.yaml"), "--out", str(tmp_path / "r"),
                 "--set", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    # a weights file that exists: the image folder is checked before any model is loaded
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"x")
    no_images = tmp_path / "no_images"
    no_images.mkdir()
    assert main(["detect", "predict", "--weights", str(fake), "--image_dir", str(no_images),
                 "--out", str(tmp_path / "b.json")]) == 2
    assert "holds no images" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "bad.png").write_bytes(b"garbage")
    assert main(["detect", "predict", "--weights", str(fake), "--image_dir", str(corrupt),
                 "--out", str(tmp_path / "b.json")]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert main(["detect", "predict", "--weights", str(fake), "--image_dir", str(corrupt),
                 "--out", str(tmp_path / "b.json"), "--conf", "2"]) == 2
    assert "--conf" in capsys.readouterr().err


def test_label_path_mirrors_images_folder():
    assert label_path_for("/d/images/train/a.png") == Path("/d/labels/train/a.txt")
    assert label_path_for("/images/d/images/x/b.jpg") == Path("/images/d/labels/x/b.txt")
    with pytest.raises(DataError, match="not inside an 'images' folder"):
        label_path_for("/d/pictures/a.png")


def test_run_folder_rules(tmp_path: Path):
    run = tmp_path / "run"
    assert _prepare_run_folder(run, overwrite=False) is None  # new
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "last.pt").write_bytes(b"x")
    assert _prepare_run_folder(run, overwrite=False) == run / "weights" / "last.pt"  # resume
    (run / RUN_RECORD).write_text("{}")
    with pytest.raises(MedistillError, match="finished run"):
        _prepare_run_folder(run, overwrite=False)
    assert _prepare_run_folder(run, overwrite=True) is None and not run.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(MedistillError, match="not a detector run folder"):
        _prepare_run_folder(other, overwrite=True)
    with pytest.raises(MedistillError, match="no run to resume"):
        _prepare_run_folder(other, overwrite=False)
    assert (other / "thesis.tex").is_file()


def test_checks_did_not_import_ultralytics():
    # The checks above stay cheap: bad input is refused before ultralytics is loaded.
    assert "ultralytics" not in sys.modules
