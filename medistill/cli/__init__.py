"""``python -m medistill <command>``: one small module per command.

Each command module has ``add_arguments(parser)`` and ``run(args) -> int``; heavy
imports (TensorFlow) happen inside ``run`` so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medistill import __version__
from medistill.console import setup_logging
from medistill.errors import MedistillError

COMMANDS = {
    "phantoms": ("medistill.cli.phantoms", "write synthetic MRI-like images with lesion masks"),
    "sources": ("medistill.cli.sources", "export an installed real data set (MNI152, Colin27, nuclei, cells3d)"),
    "train": ("medistill.cli.train", "train a supervised student on images and masks"),
    "evaluate": ("medistill.cli.evaluate", "predict with a trained model and compute metrics (= predict_eval.py)"),
    "yolodata": ("medistill.cli.yolodata", "write a YOLO box data set from images and masks (= Creat_yolodata.py)"),
    "detect": ("medistill.cli.detect", "train/predict/evaluate the YOLO box detector; oracle boxes (= detection.py)"),
    "teach": ("medistill.cli.teach", "run a teacher (LiteMedSAM, GrabCut, SAM) on boxes and cache its soft masks"),
    "meddistill": ("medistill.cli.meddistill",
                   "distil a box-prompted foundation model into a prompt-free student, no masks (= meddistill.py)"),
    "distill": ("medistill.cli.distill", "supervised / semi-supervised distillation: KAMSD, CAKD+MSKD, SIKD, SSCD"),
    "report": ("medistill.cli.report",
               "the pipeline's summary table (box recall, teacher and student Dice) and the detector's threshold"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medistill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medistill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    setup_logging(args.verbose)
    return run_command(COMMANDS[args.command][0], args)


def run_script(prog: str, module: str, doc: str) -> int:
    """The body of a top-level script (``predict_eval.py`` …) that runs one command.

    The first line of ``doc`` is the description; its indented usage lines are the epilog.
    """
    lines = doc.strip().splitlines()
    usage = [line for line in lines[1:] if line.startswith("    ")]
    parser = argparse.ArgumentParser(prog=prog, description=lines[0], epilog="\n".join(usage),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    importlib.import_module(module).add_arguments(parser)
    args = parser.parse_args()
    setup_logging(args.verbose)
    return run_command(module, args)
