#!/usr/bin/env python
"""Predict with a trained medistill model and evaluate it against masks.

    python predict_eval.py --image_dir D --mask_dir M --model_path RUN --vis_dir V

Same as ``python -m medistill evaluate``; see ``--help`` for every option.
"""

import sys

from medistill.cli import run_command, setup_logging
from medistill.cli.evaluate import add_arguments

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="predict_eval.py", description=__doc__.splitlines()[1])
    add_arguments(parser)
    args = parser.parse_args()
    setup_logging()
    sys.exit(run_command("medistill.cli.evaluate", args))
