"""``medistill yolodata`` (and ``Creat_yolodata.py``): a segmentation set as a YOLO detection set."""

from __future__ import annotations

import argparse

from medistill.boxes.yolo_dataset import DEFAULT_FRACTIONS, DEFAULT_GROUP_PATTERN
from medistill.cli.options import add_mask_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("input (either --data, or --image_dir with --mask_dir)")
    source.add_argument("--data", help="data-set folder: images/ + masks/, or train/ val/ test/ "
                        "each with images/ + masks/ (kept as the splits)")
    source.add_argument("--image_dir", "--image-dir", help="folder of images (NIfTI volumes become slices)")
    source.add_argument("--mask_dir", "--mask-dir", help="folder of masks, paired with the images by stem")
    parser.add_argument("--out", required=True, help="output folder: data.yaml, images/, labels/")
    parser.add_argument("--split", type=float, nargs=3, default=list(DEFAULT_FRACTIONS),
                        metavar=("TRAIN", "VAL", "TEST"),
                        help="fractions of the groups (volumes or images) per split (default 0.8 0.1 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--min-area", type=int, default=1,
                        help="drop connected components smaller than this many pixels (default 1)")
    parser.add_argument("--one-box", action="store_true",
                        help="one box per class around all foreground (the released MedDistill rule) "
                        "instead of one per connected component")
    parser.add_argument("--class-names", nargs="+", metavar="NAME",
                        help="names of label values 1, 2, ... (default: 'foreground', or label_1, label_2 ...)")
    parser.add_argument("--group-pattern", default=DEFAULT_GROUP_PATTERN,
                        help="regular expression on 2-D file stems; files with the same first group "
                        "stay in one split (default: %(default)s, slices named <name>_z<index> are one "
                        "volume); '' turns it off: every file is its own group")
    parser.add_argument("--drop-empty-slices", action="store_true",
                        help="leave out NIfTI slices whose mask is empty (default: keep them as negatives)")
    add_mask_options(parser)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable or mismatched files with a warning")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the YOLO set in a non-empty --out")


def run(args: argparse.Namespace) -> int:
    from medistill.boxes.yolo_dataset import YoloDataConfig, build_yolo_dataset, format_summary

    config = YoloDataConfig(
        out=args.out, image_dir=args.image_dir, mask_dir=args.mask_dir, data=args.data,
        split=tuple(args.split), seed=args.seed, min_area=args.min_area, one_box=args.one_box,
        class_names=args.class_names, mask_suffix=args.mask_suffix, mask_mode=args.mask_mode,
        mask_pattern=args.mask_pattern,
        group_pattern=args.group_pattern, drop_empty_slices=args.drop_empty_slices,
        skip_bad=args.skip_bad, overwrite=args.overwrite,
    )
    summary = build_yolo_dataset(config)
    print(format_summary(summary))
    print(f"YOLO set: {args.out}/data.yaml (classes: {', '.join(summary.class_names)})")
    return 0
