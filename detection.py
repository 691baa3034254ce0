#!/usr/bin/env python
"""Train, run and evaluate the YOLO box detector; write boxes files.

    python detection.py train --data Y/data.yaml --model yolo11n.yaml --epochs 50 --imgsz 256 --out RUN
    python detection.py predict --weights RUN/weights/best.pt --image_dir D --out boxes.json
    python detection.py boxes-from-masks --mask_dir M --out boxes.json [--jitter 0.1]
    python detection.py eval --weights RUN/weights/best.pt --data Y/data.yaml

Same as ``python -m medistill detect``; see ``--help`` of each subcommand.
"""

import sys

from medistill.cli import run_command, setup_logging
from medistill.cli.detect import add_arguments

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="detection.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:6]))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args()
    setup_logging(args.verbose)
    sys.exit(run_command("medistill.cli.detect", args))
