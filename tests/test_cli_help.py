"""Every option's default is in ``--help``; the entry points keep TensorFlow's log lines quiet."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medistill.cli import build_parser, script_parser
from medistill.cli.options import HelpParser, shown_default

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"Creat_yolodata.py": "medistill.cli.yolodata", "detection.py": "medistill.cli.detect",
           "meddistill.py": "medistill.cli.meddistill", "predict_eval.py": "medistill.cli.evaluate"}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def all_parsers():
    """``(name, parser)`` of ``python -m medistill``, every command and subcommand, and the scripts."""
    def walk(parser, name):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub_parser in action.choices.items():
                    yield from walk(sub_parser, f"{name} {sub_name}")

    yield from walk(build_parser(), "medistill")
    for script, module in SCRIPTS.items():
        yield from walk(script_parser(script, module, f"{script}\n"), script)


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line(s) ``--help`` prints for one option, on one line."""
    formatter = parser._get_formatter()
    return " ".join(formatter._format_action(action).split())


def names_default(text: str, action: argparse.Action) -> bool:
    shown = shown_default(action)
    if shown in text:
        return True
    if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
        after = text.lower().split("default", 1)[-1]
        return any(float(token) == float(action.default) for token in _NUMBER.findall(after)[:3])
    return action.default == "" and "default" in text.lower()


def test_every_default_is_shown_in_help():
    missing, checked = [], 0
    for name, parser in all_parsers():
        assert isinstance(parser, HelpParser), f"{name} does not use the help formatter"
        for action in parser._actions:
            if shown_default(action) is None:
                continue
            checked += 1
            text = option_help(parser, action)
            if not names_default(text, action):
                missing.append(f"{name}: {text}")
    assert checked > 100  # the walk really reached every command's options
    assert not missing, "options whose --help does not show the default:\n" + "\n".join(missing)


def test_flags_and_unset_options_get_no_default_text():
    parser = HelpParser(prog="x")
    parser.add_argument("--plain", type=int, default=30)
    parser.add_argument("--flag", action="store_true")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--qc", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--pattern", default="{stem}_*.png", help="with a %% sign")
    text = " ".join(parser.format_help().split())
    assert "--plain PLAIN default: 30" in text
    assert "--qc, --no-qc default: --qc" in text and "with a % sign (default: {stem}_*.png)" in text
    assert "default: False" not in text and "default: True" not in text


def test_defaults_that_differ_between_tools_say_why():
    helps = {name: {a.dest: option_help(p, a) for a in p._actions} for name, p in all_parsers()}
    assert "meddistill.py" in helps["medistill train"]["lr"] and "1e-3" in helps["medistill train"]["lr"]
    assert "medistill train" in helps["meddistill.py"]["lr"] and "3e-3" in helps["meddistill.py"]["lr"]
    assert "noisy" in helps["detection.py train"]["patience"]


def _tensorflow_uses_onednn_by_default() -> bool:
    """TensorFlow turns its oneDNN operations on (and says so while loading) only on x86 CPUs
    with AVX-512 VNNI/BF16 or AMX; on an AVX2-only CPU there is no such line to hide."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"))


@pytest.mark.slow
def test_scripts_are_quiet_by_default_and_verbose_with_v(tmp_path):
    """A real command that imports TensorFlow and iterates a generator dataset, run as a user would."""
    from medistill.data import write_image_png, write_mask_png
    import numpy as np

    rng = np.random.default_rng(0)
    for index in range(4):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8 + index:20 + index] = 255
        write_image_png(tmp_path / "data" / "images" / f"c{index}.png", rng.integers(0, 255, (32, 32), np.uint8))
        write_mask_png(tmp_path / "data" / "masks" / f"c{index}.png", mask)
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)

    def train(out: str, *extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "medistill", *extra, "train", "--data", str(tmp_path / "data"),
             "--out", str(tmp_path / out), "--img-size", "32", "--epochs", "1", "--batch", "2",
             "--steps-per-epoch", "1", "--min-steps-per-epoch", "1",
             "--student-options", '{"base_filters": 4, "depth": 2}'],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    quiet = train("quiet")
    assert "cuInit" not in quiet and "GeneratorDatasetOp" not in quiet and "generator_dataset_op" not in quiet
    assert not re.search(r"^[IWE]\d{4} ", quiet, re.MULTILINE)  # no C++ log line at all, import-time ones too
    assert "oneDNN custom operations" not in quiet and "absl::InitializeLog" not in quiet
    loud = train("loud", "-v")
    assert re.search(r"^[IWE]\d{4} .*(cuInit|generator_dataset_op|GeneratorDataset)", loud, re.MULTILINE)
    if _tensorflow_uses_onednn_by_default():
        assert "oneDNN custom operations" in loud  # printed while TensorFlow loads: shown with -v only
