"""The offline preparation of ultralytics (without importing it in the test process)."""

from __future__ import annotations

import os
from pathlib import Path

from medistill.boxes.offline import CONFIG_DIR_ENV, FONT_NAMES, prepare_offline_environment, yolo_config_dir


def test_prepare_sets_environment_and_fonts(tmp_path: Path, monkeypatch):
    for name in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    folder = prepare_offline_environment(tmp_path / "cfg")
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "false"
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "cfg") == str(folder)
    for name in FONT_NAMES:  # the file names ultralytics 8.4 looks up before downloading
        font = folder / "Ultralytics" / name
        assert font.is_file() and font.read_bytes()[:4] == b"\x00\x01\x00\x00"  # TrueType
    prepare_offline_environment(tmp_path / "cfg")  # idempotent


def test_config_folder_choice(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "mine"))
    assert yolo_config_dir() == tmp_path / "mine"
    monkeypatch.delenv(CONFIG_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert yolo_config_dir() == tmp_path / "xdg" / "medistill" / "ultralytics"
