"""``medistill report``: the whole pipeline's summary table; the detector's threshold.

Subcommands::

    # the detector's score threshold, chosen on labelled validation images
    python -m medistill report conf --boxes val_boxes.json --mask_dir data/labelled/masks --out conf.txt

    # one table: box recall, teacher Dice, distilled and supervised student Dice
    python -m medistill report table --mask_dir data/test/masks --boxes boxes/test.json \\
        --teacher-cache runs/teacher_test.h5 --student-eval eval/student \\
        --supervised-eval eval/supervised --timings demo_out/steps --out demo_out

Nothing here imports TensorFlow or torch, except the latency rows of ``table``, which
load the student, detector and teacher to time them (``--latency-images 0``: no rows).
"""

from __future__ import annotations

import argparse
import logging

from medistill.cli.options import add_mask_options
from medistill.errors import MedistillError

log = logging.getLogger("medistill.boxes")
# The exit status when the result would be useless (as detection.py train's; see --accept-weak-detector).
WEAK_EXIT = 3

SUBCOMMANDS = {
    "table": "one table of box recall, teacher Dice and student Dice on test images with masks",
    "conf": "choose the detector's score threshold (best box F1) on labelled images",
}


def _mask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask_dir", "--mask-dir", required=True, help="ground-truth masks, named by image stem")
    parser.add_argument("--image_dir", "--image-dir",
                        help="the images (optional; needed with --mask-suffix)")
    add_mask_options(parser)
    parser.add_argument("--min-area", type=int, default=1,
                        help="ground-truth boxes: drop components smaller than this (as Creat_yolodata.py)")


def _table_arguments(parser: argparse.ArgumentParser) -> None:
    _mask_arguments(parser)
    parser.add_argument("--boxes", help="the detector's boxes file of the test images")
    parser.add_argument("--teacher-cache", help="teacher cache (HDF5) of the test images, from `medistill teach`")
    parser.add_argument("--threshold", type=float, default=0.5, help="on the teacher's soft masks (default 0.5)")
    parser.add_argument("--student-eval", help="predict_eval.py --vis_dir of the distilled student")
    parser.add_argument("--supervised-eval", help="predict_eval.py --vis_dir of the supervised student")
    parser.add_argument("--timings", help="folder of step records (make demo's steps/) to print too")
    parser.add_argument("--latency-images", type=int, default=5, metavar="N",
                        help="latency rows: the student's (--student-eval), the detector's (--boxes from "
                        "detection.py) and the teacher's (--teacher-cache) batch-1 CPU time per image, the "
                        "median over N test images after a warm-up (detector and teacher need --image_dir); "
                        "0: no latency rows")
    parser.add_argument("--out", help="write pipeline_report.md, .csv and .json into this folder")


def _conf_arguments(parser: argparse.ArgumentParser) -> None:
    _mask_arguments(parser)
    parser.add_argument("--boxes", required=True,
                        help="boxes file of labelled images predicted with a low --conf (e.g. 0.05)")
    parser.add_argument("--candidates", type=float, nargs="+",
                        help="thresholds to try (default 0.05, 0.10, ..., 0.90)")
    parser.add_argument("--out", help="write the chosen threshold (a bare number) to this file")
    parser.add_argument("--accept-weak-detector", action="store_true",
                        help="when no threshold finds a single ground-truth box, still write the lowest "
                        f"candidate and exit 0 (without it: a warning, nothing written, exit {WEAK_EXIT})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options = {"table": _table_arguments, "conf": _conf_arguments}
    sub = parser.add_subparsers(dest="report_command", metavar="SUBCOMMAND", required=True)
    for name, summary in SUBCOMMANDS.items():
        options[name](sub.add_parser(name, help=summary, description=summary))


def run(args: argparse.Namespace) -> int:
    return {"table": _table, "conf": _conf}[args.report_command](args)


def _masks(args: argparse.Namespace):
    from medistill.evaluate.pipeline_report import load_masks

    return load_masks(args.mask_dir, args.image_dir, args.mask_suffix, args.mask_mode, args.mask_pattern)


def _table(args: argparse.Namespace) -> int:
    from medistill.boxes.boxes_file import read_boxes
    from medistill.evaluate import pipeline_report as report
    from medistill.evaluate.latency import latency_rows

    if not 0.0 < args.threshold < 1.0:
        raise MedistillError(f"--threshold is a probability in (0, 1), got {args.threshold}")
    if args.latency_images < 0:
        raise MedistillError(f"--latency-images counts images (0 turns the rows off), got {args.latency_images}")
    if not (args.boxes or args.teacher_cache or args.student_eval or args.supervised_eval):
        raise MedistillError("nothing to report: give --boxes, --teacher-cache, --student-eval "
                             "and/or --supervised-eval")
    masks = _masks(args)
    rows, tables = [], {}
    boxes = read_boxes(args.boxes) if args.boxes else None
    which = report.boxes_name(boxes) if boxes is not None else "detector boxes"
    labels = report.foreground_labels(masks)
    names = boxes.class_names if boxes is not None else []

    def add(step: str, table_of) -> None:
        """A Dice row from per-image tables, and one per class for label masks."""
        tables[step] = table_of(None)
        rows.append(report.summary_row(step, tables[step].summary()))
        for label in labels:
            per_class = f"{step}, class {report.class_name(names, label)}"
            tables[per_class] = table_of(label)
            rows.append(report.summary_row(per_class, tables[per_class].summary()))

    if boxes is not None:
        rows.append(report.box_recall_row(which, boxes, masks, min_area=args.min_area))
        add(f"{which} as masks (no segmentation)", lambda label: report.box_mask_table(boxes, masks, label))
    if args.teacher_cache:
        add(f"teacher ({_teacher_name(args.teacher_cache)}) on {which}",
            lambda label: report.teacher_table(args.teacher_cache, masks, args.threshold, label))
    for step, path in (("distilled student (no masks)", args.student_eval),
                       ("supervised student (upper bound)", args.supervised_eval)):
        if path:
            rows.append(report.evaluation_row(step, path))
            table = report.eval_image_table(path)
            if table is not None:
                tables[step] = table
    rows += latency_rows(args.latency_images, args.image_dir, boxes, args.teacher_cache, args.student_eval)
    times = report.read_step_times(args.timings) if args.timings else []
    print(f"\nPipeline on {len(masks)} held-out images with ground truth:\n")
    print(report.format_text(rows))
    if times:
        print("\nStep wall times:\n")
        print(report.format_timings(times))
    if args.out:
        paths = report.write_outputs(rows, args.out, times, report.image_table(tables))
        print(f"\nreport: {paths['md']} (also .csv, .json); per image: {paths.get('images', '-')}")
    return 0


def _teacher_name(cache_path: str) -> str:
    from medistill.teachers.cache import CacheReader

    with CacheReader(cache_path) as cache:
        return cache.teacher


def _conf(args: argparse.Namespace) -> int:
    from medistill.boxes.boxes_file import read_boxes
    from medistill.boxes.scoring import (DEFAULT_CONFIDENCES, best_point, confidence_curve, format_curve,
                                         sample_warning, truth_boxes)
    from medistill.fileio import write_text_atomic

    boxes = read_boxes(args.boxes)
    truth = truth_boxes(_masks(args), min_area=args.min_area)
    candidates = args.candidates or DEFAULT_CONFIDENCES
    points = confidence_curve(boxes, truth, candidates)
    best = best_point(points)
    print(format_curve(points, chosen=best.conf))
    images, objects = len(boxes.images), best.truths
    print(f"chosen conf {best.conf:g}: box recall {best.recall:.3f}, precision {_number(best.precision)}, "
          f"F1 {best.f1:.3f}; decided by {images} images with {objects} ground-truth boxes "
          f"({best.matched} found at this threshold)")
    warning = sample_warning(images, objects)
    if warning:
        log.warning("%s", warning)
    if best.matched == 0:
        log.warning("no threshold finds a single one of the %d ground-truth boxes: the detector's boxes "
                    "(%s) miss every object, so any threshold gives the teacher no right prompt. Train the "
                    "detector again (more epochs or labelled images, a smaller --batch; see detection.py "
                    "train's warning), then predict these images again. %s", objects, args.boxes,
                    "Writing the lowest candidate anyway (--accept-weak-detector)" if args.accept_weak_detector
                    else "Nothing written; pass --accept-weak-detector to write the lowest candidate")
        if not args.accept_weak_detector:
            return WEAK_EXIT
        best = points[0]
    if args.out:
        write_text_atomic(args.out, f"{best.conf:g}\n")
    return 0


def _number(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"  # NaN: nothing kept
