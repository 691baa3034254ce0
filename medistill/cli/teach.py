"""``medistill teach``: run a teacher on every image of a boxes file and cache its outputs.

Example::

    python -m medistill teach --image_dir data/images --boxes boxes.json \\
        --teacher litemedsam --out runs/teacher.h5

A killed run resumes when the same command is run again; a cache made with another
teacher or boxes file is refused unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image_dir", "--image-dir", dest="image_dir", required=True,
                        help="folder holding the images named in the boxes file")
    parser.add_argument("--boxes", required=True, help="boxes file (JSON, medistill.boxes format)")
    parser.add_argument("--teacher", default="litemedsam",
                        help="litemedsam | litemedsam:/path/to.pth | grabcut | sam:<preset-or-dir> | tiny-sam "
                        "(default litemedsam)")
    parser.add_argument("--out", required=True, help="the HDF5 cache to write (resumed if it exists)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing cache from scratch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from medistill.teachers.cache import build_cache
    from medistill.teachers.registry import build_teacher

    teacher = build_teacher(args.teacher)
    summary = build_cache(teacher, args.image_dir, args.boxes, args.out, overwrite=args.overwrite,
                          progress=not args.no_progress)
    print(json.dumps({"out": args.out, "teacher": args.teacher, **summary}))
    return 0
