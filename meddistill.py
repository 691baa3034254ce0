#!/usr/bin/env python
"""Distil a box-prompted foundation model into a small segmentation student, without labels.

    python meddistill.py --image_dir D --boxes boxes.json --teacher litemedsam --student unetpp --img-size 256 --epochs 100 --batch 8 --out RUN

Same as ``python -m medistill meddistill``; see ``--help`` for every option.
"""

import sys

from medistill.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("meddistill.py", "medistill.cli.meddistill", __doc__))
