"""The command-line entry points: help, console script, and errors without tracebacks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medistill.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "medistill"
    if not script.exists():
        script = shutil.which("medistill")
    assert script, "the medistill console script is not installed (pip install -e .)"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "medistill" in result.stdout


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantoms", "--out", str(out), "--n", "2", "--size", "32"]) == 0
    assert main(["phantoms", "--out", str(out), "--n", "2", "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "medistill: error:" in err and str(out) in err and "--overwrite" in err


def test_predict_eval_script_reports_a_missing_model(tmp_path):
    (tmp_path / "images").mkdir()
    result = subprocess.run(
        [sys.executable, "predict_eval.py", "--image_dir", str(tmp_path / "images"),
         "--model_path", str(tmp_path / "nope")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "model not found" in result.stderr and str(tmp_path / "nope") in result.stderr
    assert "Traceback" not in result.stderr
