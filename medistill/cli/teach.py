"""``medistill teach``: run a teacher on every image of a boxes file and cache its outputs.

Example::

    python -m medistill teach --image_dir data/images --boxes boxes.json \\
        --teacher litemedsam --out runs/teacher.h5 --quality-report runs/quality
    python -m medistill teach ... --teacher-backend openvino    # exported once, reused after
    python -m medistill teach ... --shard 0/4        # part 0 of 4 → runs/teacher.shard-0-of-4.h5
    python -m medistill teach ... --merge            # the 4 shards → runs/teacher.h5
    python -m medistill teach ... --workers 2        # 2 processes here, shards merged at the end

A killed run resumes when the same command is run again; a cache made with another
teacher, boxes file or quality settings is refused unless ``--overwrite`` is given, and
so is a cache reused with other images (their hashes differ). Each mask gets a quality
record (teacher score, stability under ``--jitter`` box jitter over ``--jitter-draws``
draws, fill ratio, components, area); ``--quality-report DIR`` then writes the
label-free keep / down-weight / drop decisions (``quality_decisions.csv``), the
lowest-weighted masks over their images (``quality_contact_sheet.png``) and a summary
(``quality_summary.json``); see ``docs/pseudo_label_quality.md``.
"""

from __future__ import annotations

import argparse
import json

from medistill.cli.teach_run import add_runtime_arguments
from medistill.teachers.cache_storage import STORAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image_dir", "--image-dir", dest="image_dir", required=True,
                        help="folder holding the images named in the boxes file")
    parser.add_argument("--boxes", required=True, help="boxes file (JSON, medistill.boxes format)")
    parser.add_argument("--teacher", default="litemedsam",
                        help="litemedsam | litemedsam:/path/to.pth | grabcut | sam:<preset-or-dir> | tiny-sam "
                        "(default litemedsam)")
    parser.add_argument("--out", required=True, help="the HDF5 cache to write (resumed if it exists)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild an existing teacher cache from scratch (never deletes other files)")
    parser.add_argument("--jitter", type=float, default=0.05,
                        help="stability: largest move of each box edge, fraction of the box size (default 0.05)")
    parser.add_argument("--jitter-draws", type=int, default=3,
                        help="stability: jittered boxes per box (default 3; 0 turns stability off)")
    parser.add_argument("--cache-features", default="compact", choices=STORAGES,
                        help="compact (default, ~0.3 MB an image): encoder features pooled 2x2 and stored in 8 bits, "
                        "masks in 8 bits; full (~2 MB): as computed, needed by meddistill.py --co-learn and by "
                        "students of more than 128 px that want the teacher's full feature resolution")
    parser.add_argument("--quality-report", metavar="DIR",
                        help="write the quality-control decisions, contact sheet and summary to DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    scale = parser.add_argument_group("several processes or machines")
    scale.add_argument("--shard", metavar="I/N",
                       help="teach only part I of N of the boxes file (entries I, I+N, ...) into "
                       "OUT's shard cache <stem>.shard-I-of-N.h5 (e.g. a Slurm array task); resumes like a cache")
    scale.add_argument("--merge", action="store_true",
                       help="merge the complete shard caches of --out into --out (runs no teacher)")
    scale.add_argument("--workers", type=int, default=1,
                       help="K processes on this machine, one shard each, merged into --out at the end")
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from medistill.boxes.boxes_file import check_image_paths, read_boxes
    from medistill.errors import MedistillError
    from medistill.teachers.shards import parse_shard

    check_image_paths(read_boxes(args.boxes), args.image_dir)  # no image outside --image_dir
    if sum([bool(args.shard), args.merge, args.workers != 1]) > 1:
        raise MedistillError("--shard, --merge and --workers are different ways to run: give one of them")
    if args.workers < 1:
        raise MedistillError(f"--workers must be at least 1, got {args.workers}")
    if args.merge:
        from medistill.teachers.cache_merge import merge_shards
        from medistill.teachers.shards import find_shard_count

        summary = merge_shards(args.out, find_shard_count(args.out), args.boxes, overwrite=args.overwrite)
    elif args.workers > 1:
        from medistill.cli.teach_run import teach_with_workers

        summary = teach_with_workers(args)
    else:
        from medistill.cli.teach_run import teach_one

        summary = teach_one(args, parse_shard(args.shard) if args.shard else None)
    if args.quality_report:
        summary["quality_report"] = quality_report(summary.get("shard_cache", args.out), args.image_dir,
                                                   args.quality_report)
    print(json.dumps({"out": args.out, "teacher": args.teacher, **summary}))
    return 0


def quality_report(cache: str, image_dir: str, out_dir: str) -> dict:
    """Decisions CSV, contact sheet and summary JSON of a cache in ``out_dir``; the summary."""
    from pathlib import Path

    from medistill.distill.meddistill import quality_control as qc
    from medistill.fileio import write_json_atomic

    out = Path(out_dir)
    decisions = qc.decide_cache(cache)
    qc.write_decisions_csv(out / "quality_decisions.csv", decisions)
    qc.contact_sheet(out / "quality_contact_sheet.png", decisions, cache, image_dir=image_dir)
    result = qc.summary(decisions)
    write_json_atomic(out / "quality_summary.json", result)
    return {key: result[key] for key in ("masks", "keep", "down-weight", "drop", "mean_image_weight")}
