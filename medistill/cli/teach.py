"""``medistill teach``: run a teacher on every image of a boxes file and cache its outputs.

Example::

    python -m medistill teach --image_dir data/images --boxes boxes.json \\
        --teacher litemedsam --out runs/teacher.h5 --quality-report runs/quality
    python -m medistill teach ... --teacher-backend openvino    # exported once, reused after

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
    parser.add_argument("--quality-report", metavar="DIR",
                        help="write the quality-control decisions, contact sheet and summary to DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runtime_arguments(parser)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--teacher-backend``, ``--teacher-precision``, ``--teacher-batch``, ``--teacher-threads``
    (every command that runs a teacher; read with :func:`use_runtime_from_args`)."""
    group = parser.add_argument_group("where the teacher runs (litemedsam)")
    group.add_argument("--teacher-backend", default="auto", choices=("auto", "keras", "onnxruntime", "openvino"),
                       help="keras (TensorFlow), onnxruntime or openvino (LiteMedSAM exported once next to its "
                       "converted weights, then reused); auto: the fastest that passed the parity tests on this "
                       "project's machines (README, Teacher backends)")
    group.add_argument("--teacher-precision", default="fp32", choices=("fp32", "bf16"),
                       help="bf16 only with --teacher-backend openvino (masks within the documented tolerance)")
    group.add_argument("--teacher-batch", type=int,
                       help="images per encoder call (default: the backend's, 1 where batching was not faster)")
    group.add_argument("--teacher-threads", type=int,
                       help="threads of ONNX Runtime / OpenVINO (default: every core)")


def use_runtime_from_args(args: argparse.Namespace):
    """Parse the teacher-runtime options once and make them the process's (``build_teacher`` uses them)."""
    from medistill.teachers.registry import TeacherRuntime, use_runtime

    runtime = TeacherRuntime(backend=args.teacher_backend, precision=args.teacher_precision,
                             encode_batch=args.teacher_batch, threads=args.teacher_threads)
    use_runtime(runtime)
    return runtime


def run(args: argparse.Namespace) -> int:
    from medistill.teachers.cache import build_cache
    from medistill.teachers.quality import QualitySettings
    from medistill.teachers.registry import build_teacher

    from medistill.boxes.boxes_file import check_image_paths, read_boxes

    check_image_paths(read_boxes(args.boxes), args.image_dir)  # no image outside --image_dir
    settings = QualitySettings(jitter=args.jitter, draws=args.jitter_draws)
    use_runtime_from_args(args)
    teacher = build_teacher(args.teacher)
    summary = build_cache(teacher, args.image_dir, args.boxes, args.out, overwrite=args.overwrite,
                          progress=not args.no_progress, quality=settings)
    if args.quality_report:
        summary["quality_report"] = quality_report(args.out, args.image_dir, args.quality_report)
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
