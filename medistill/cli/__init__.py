"""``python -m medistill <command>``: one small module per command.

Each command module has ``add_arguments(parser)`` and ``run(args) -> int``; heavy
imports (TensorFlow) happen inside ``run`` so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medistill import __version__
from medistill.cli.options import HelpParser
from medistill.console import quiet_libraries, setup_logging
from medistill.errors import MedistillError

COMMANDS = {
    "phantoms": ("medistill.cli.phantoms", "write synthetic MRI-like images with lesion masks"),
    "sources": ("medistill.cli.sources", "export an installed real data set (MNI152, Colin27, nuclei, cells3d)"),
    "train": ("medistill.cli.train", "train a supervised student on images and masks"),
    "evaluate": ("medistill.cli.evaluate", "predict with a trained model and compute metrics (= predict_eval.py)"),
    "predict": ("medistill.cli.predict", "segment new images or NIfTI volumes with a trained model (any backend)"),
    "export": ("medistill.cli.export", "export a trained student to ONNX, OpenVINO or LiteRT for medistill predict"),
    "yolodata": ("medistill.cli.yolodata", "write a YOLO box data set from images and masks (= Creat_yolodata.py)"),
    "detect": ("medistill.cli.detect", "train/predict/evaluate the YOLO box detector; oracle boxes (= detection.py)"),
    "teach": ("medistill.cli.teach", "run a teacher (LiteMedSAM, GrabCut, SAM) on boxes and cache its soft masks"),
    "meddistill": ("medistill.cli.meddistill",
                   "distil a box-prompted foundation model into a prompt-free student, no masks (= meddistill.py)"),
    "distill": ("medistill.cli.distill", "supervised / semi-supervised distillation: KAMSD, CAKD+MSKD, SIKD, SSCD"),
    "report": ("medistill.cli.report",
               "the pipeline's summary table (box recall, teacher and student Dice) and the detector's threshold"),
}

VERBOSE_HELP = ("debug logging, and TensorFlow's and CUDA's own log lines (hidden otherwise; "
                "an exported TF_CPP_MIN_LOG_LEVEL is kept)")


def build_parser() -> argparse.ArgumentParser:
    parser = HelpParser(prog="medistill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medistill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary)
        importlib.import_module(module).add_arguments(command)
    return parser


def run_command(module: str, args: argparse.Namespace) -> int:
    """Run one command; a :class:`MedistillError` becomes a message and exit status 2."""
    try:
        return int(importlib.import_module(module).run(args) or 0)
    except MedistillError as error:
        print(f"medistill: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medistill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    setup_logging(args.verbose)
    return run_command(COMMANDS[args.command][0], args)


def script_parser(prog: str, module: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a top-level script: ``doc``'s first line, its indented usage lines as epilog."""
    lines = doc.strip().splitlines()
    usage = [line for line in lines[1:] if line.startswith("    ")]
    parser = HelpParser(prog=prog, description=lines[0], epilog="\n".join(usage))
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    importlib.import_module(module).add_arguments(parser)
    return parser


def run_script(prog: str, module: str, doc: str) -> int:
    """The body of a top-level script (``predict_eval.py`` …) that runs one command.

    The first line of ``doc`` is the description; its indented usage lines are the epilog.
    """
    parser = script_parser(prog, module, doc)
    args = parser.parse_args()
    quiet_libraries(args.verbose)
    setup_logging(args.verbose)
    return run_command(module, args)
