#!/usr/bin/env python
"""Train, run and evaluate the YOLO box detector; write boxes files.

    python detection.py train --data Y/data.yaml --model yolo11n.yaml --epochs 50 --imgsz 256 --out RUN
    python detection.py predict --weights RUN/weights/best.pt --image_dir D --out boxes.json
    python detection.py boxes-from-masks --mask_dir M --out boxes.json [--jitter 0.1]
    python detection.py eval --weights RUN/weights/best.pt --data Y/data.yaml

Same as ``python -m medistill detect``; see ``--help`` of each subcommand.
"""

import sys

from medistill.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("detection.py", "medistill.cli.detect", __doc__))
