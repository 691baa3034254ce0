#!/usr/bin/env python
"""Predict with a trained medistill model and evaluate it against masks.

    python predict_eval.py --image_dir D --mask_dir M --model_path RUN --vis_dir V

Same as ``python -m medistill evaluate``; see ``--help`` for every option.
"""

import sys

from medistill.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("predict_eval.py", "medistill.cli.evaluate", __doc__))
