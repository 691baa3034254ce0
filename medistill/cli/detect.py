"""``medistill detect`` (and ``detection.py``): train, predict with and evaluate the box detector.

Subcommands: ``train``, ``predict``, ``boxes-from-masks``, ``eval``. Nothing here imports
TensorFlow; ultralytics is imported offline by :mod:`medistill.boxes.offline`.
"""

from __future__ import annotations

import argparse
import logging

import yaml

from medistill.cli.options import add_mask_options
from medistill.errors import MedistillError

log = logging.getLogger("medistill.boxes")

SUBCOMMANDS = {
    "train": "train a YOLO detector on a YOLO set (Creat_yolodata.py output)",
    "predict": "write the boxes file of every image of a folder",
    "boxes-from-masks": "write the boxes file from ground-truth masks (oracle boxes)",
    "eval": "precision, recall, mAP50, mAP50-95 and box recall on the test split",
}

# The exit status of a run whose result is useless (kept with --accept-weak-detector).
WEAK_EXIT = 3
DEVICE_HELP = "'cpu', or '0' for the first GPU (default: the first GPU if there is one, else the CPU)"


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data.yaml of the YOLO set")
    parser.add_argument("--model", default="yolo11n.yaml",
                        help="a .yaml model configuration (from scratch; yolo11n.yaml, yolov8n.yaml, "
                        "...) or a local .pt file (fine-tuning). Default yolo11n.yaml")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--imgsz", type=int, default=256, help="training size in pixels, a multiple of 32")
    parser.add_argument("--batch", type=int, default=8, help="batch size, one optimizer step each (default 8)")
    parser.add_argument("--out", required=True, help="run folder (weights/best.pt inside); a killed run resumes")
    parser.add_argument("--device", default="", help=DEVICE_HELP)
    parser.add_argument("--optimizer", default="AdamW", help="ultralytics optimizer name (default AdamW)")
    parser.add_argument("--lr0", type=float, default=0.003,
                        help="initial learning rate (default 0.003 with AdamW: ultralytics' SGD settings "
                        "learn nothing from a few dozen images in few steps)")
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="default 1")
    parser.add_argument("--mosaic", type=float,
                        help="mosaic probability (default: 0 below 500 training images, else 1)")
    parser.add_argument("--patience", type=int, default=50,
                        help="early stop after this many epochs without a better fitness (mAP) "
                        "(default 50: mAP on a small validation split is noisy, so the segmentation "
                        "trainers' 10-20 would stop too soon)")
    parser.add_argument("--workers", type=int, help="data-loading workers (default 0 on a CPU, 4 on a GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plots", action="store_true", help="let ultralytics draw its plots (slower)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other ultralytics training argument, e.g. --set fliplr=0 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--accept-weak-detector", action="store_true",
                        help=f"exit 0 even when the detector learned nothing (validation recall and mAP50 "
                        f"near 0); without it such a run warns and exits {WEAK_EXIT}")


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="RUN/weights/best.pt")
    parser.add_argument("--image_dir", "--image-dir", required=True, help="images to detect in (NIfTI volumes as slices)")
    parser.add_argument("--out", required=True, help="boxes file to write (JSON)")
    parser.add_argument("--conf", type=float, default=0.25, help="keep boxes scoring at least this (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    parser.add_argument("--max-det", type=int, default=300, help="at most this many boxes per image")
    parser.add_argument("--imgsz", type=int, help="inference size (default: the training size)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="", help=DEVICE_HELP)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")


def _boxes_from_masks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask_dir", "--mask-dir", required=True, help="ground-truth masks")
    parser.add_argument("--out", required=True, help="boxes file to write (JSON)")
    parser.add_argument("--image_dir", "--image-dir",
                        help="the images (optional): entries then name the image files")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="move each box edge by up to this fraction of the box size (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    parser.add_argument("--min-area", type=int, default=1, help="drop components below this many pixels")
    parser.add_argument("--one-box", action="store_true", help="one box per class around all foreground")
    parser.add_argument("--class-names", nargs="+", metavar="NAME", help="names of label values 1, 2, ...")
    add_mask_options(parser)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable files with a warning")


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="RUN/weights/best.pt")
    parser.add_argument("--data", required=True, help="data.yaml of the YOLO set")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="split to evaluate (default test; val when there is no test split)")
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold of the box recall (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    parser.add_argument("--imgsz", type=int, help="evaluation size (default: the training size)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="", help=DEVICE_HELP)
    parser.add_argument("--out", help="write the metrics to this JSON file too")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options = {"train": _train_arguments, "predict": _predict_arguments,
               "boxes-from-masks": _boxes_from_masks_arguments, "eval": _eval_arguments}
    sub = parser.add_subparsers(dest="detect_command", metavar="SUBCOMMAND", required=True)
    for name, summary in SUBCOMMANDS.items():
        options[name](sub.add_parser(name, help=summary, description=summary))


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "predict": _predict, "boxes-from-masks": _boxes_from_masks,
            "eval": _eval}[args.detect_command](args)


def parse_settings(pairs: list[str]) -> dict:
    """``["fliplr=0", "cos_lr=true"]`` → ``{"fliplr": 0, "cos_lr": True}`` (YAML values)."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MedistillError(f"--set {pair!r}: write KEY=VALUE, e.g. --set fliplr=0")
        try:
            settings[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise MedistillError(f"--set {pair!r}: the value is not readable ({error})") from error
    return settings


def _train(args: argparse.Namespace) -> int:
    from medistill.boxes.detector import DetectorTrainConfig, check_data_yaml, train_detector, weak_detector_warning

    result = train_detector(DetectorTrainConfig(
        data=args.data, out=args.out, model=args.model, epochs=args.epochs, imgsz=args.imgsz,
        batch=args.batch, device=args.device, optimizer=args.optimizer, lr0=args.lr0,
        warmup_epochs=args.warmup_epochs, mosaic=args.mosaic, patience=args.patience,
        workers=args.workers, seed=args.seed, plots=args.plots, overwrite=args.overwrite,
        extra=parse_settings(args.set),
    ))
    shown = {k.split("/")[-1].replace("(B)", ""): round(v, 3) for k, v in result.metrics.items()
             if k.startswith("metrics/")}
    print(f"trained in {result.seconds:.0f} s; validation: {shown}")
    print(f"weights: {result.best}")
    warning = weak_detector_warning(result, args.batch, check_data_yaml(args.data).images("train"))
    if warning:
        log.warning("%s", warning)
        return 0 if args.accept_weak_detector else WEAK_EXIT
    return 0


def _predict(args: argparse.Namespace) -> int:
    from medistill.boxes.boxes_file import write_boxes
    from medistill.boxes.detector import predict_boxes

    boxes = predict_boxes(args.weights, args.image_dir, conf=args.conf, iou=args.iou,
                          max_det=args.max_det, imgsz=args.imgsz, batch=args.batch,
                          device=args.device, skip_bad=args.skip_bad)
    write_boxes(args.out, boxes)
    empty = sum(1 for entry in boxes.images if not entry.boxes)
    print(f"{boxes.num_boxes} boxes in {len(boxes.images)} images ({empty} without a box): {args.out}")
    return 0


def _boxes_from_masks(args: argparse.Namespace) -> int:
    from medistill.boxes.boxes_file import write_boxes
    from medistill.boxes.oracle import boxes_from_masks

    if args.mask_suffix and not args.image_dir:
        raise MedistillError("--mask-suffix needs --image_dir (it says how masks pair with images)")
    boxes = boxes_from_masks(args.mask_dir, image_dir=args.image_dir, mask_suffix=args.mask_suffix,
                             mask_mode=args.mask_mode, min_area=args.min_area, one_box=args.one_box,
                             jitter=args.jitter, seed=args.seed, class_names=args.class_names,
                             skip_bad=args.skip_bad, mask_pattern=args.mask_pattern)
    write_boxes(args.out, boxes)
    empty = sum(1 for entry in boxes.images if not entry.boxes)
    print(f"{boxes.num_boxes} boxes in {len(boxes.images)} images ({empty} without a box): {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from medistill.boxes.detector import evaluate_detector, format_metrics, write_metrics

    metrics = evaluate_detector(args.weights, args.data, split=args.split, conf=args.conf,
                                iou=args.iou, imgsz=args.imgsz, batch=args.batch, device=args.device)
    print(format_metrics(metrics))
    if args.out:
        write_metrics(args.out, metrics)
        print(f"metrics: {args.out}")
    return 0
