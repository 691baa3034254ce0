#!/usr/bin/env python
"""Write a YOLO detection set (boxes from masks) from a segmentation set.

    python Creat_yolodata.py --image_dir D --mask_dir M --out Y
    python Creat_yolodata.py --data DIR --out Y --split 0.8 0.1 0.1 --seed 0

Same as ``python -m medistill yolodata``; see ``--help`` for every option.
"""

import sys

from medistill.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("Creat_yolodata.py", "medistill.cli.yolodata", __doc__))
