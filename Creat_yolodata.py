#!/usr/bin/env python
"""Write a YOLO detection set (boxes from masks) from a segmentation set.

    python Creat_yolodata.py --image_dir D --mask_dir M --out Y
    python Creat_yolodata.py --data DIR --out Y --split 0.8 0.1 0.1 --seed 0

Same as ``python -m medistill yolodata``; see ``--help`` for every option.
"""

import sys

from medistill.cli import run_command, setup_logging
from medistill.cli.yolodata import add_arguments

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="Creat_yolodata.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    setup_logging()
    sys.exit(run_command("medistill.cli.yolodata", args))
