"""``medistill evaluate`` (and ``predict_eval.py``): predictions, metrics, pictures."""

from __future__ import annotations

import argparse

from medistill.cli.options import add_label_options, add_mask_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image_dir", "--image-dir", required=True, help="folder of images to segment")
    parser.add_argument("--model_path", "--model-path", required=True,
                        help="run folder, model.keras or saved_model/ folder")
    parser.add_argument("--mask_dir", "--mask-dir", help="ground-truth masks (same stems); without it, predict only")
    parser.add_argument("--vis_dir", "--vis-dir", help="folder for overlays, the Dice plot and (by default) outputs")
    parser.add_argument("--out", help="per-image metrics CSV (a JSON summary is written beside it)")
    parser.add_argument("--pred_dir", "--pred-dir", help="folder for predicted masks (default VIS_DIR/predictions)")
    add_label_options(parser)
    parser.add_argument("--num_vis", "--num-vis", type=int, default=20, help="how many overlay panels")
    add_mask_options(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable or mismatched files with a warning")


def run(args: argparse.Namespace) -> int:
    from medistill.evaluate.predict_eval import EvalConfig, predict_and_evaluate

    predict_and_evaluate(EvalConfig(
        image_dir=args.image_dir, model_path=args.model_path, mask_dir=args.mask_dir,
        vis_dir=args.vis_dir, out=args.out, pred_dir=args.pred_dir, threshold=args.threshold,
        noise_floor=args.noise_floor, num_vis=args.num_vis, mask_suffix=args.mask_suffix, mask_mode=args.mask_mode,
        mask_pattern=args.mask_pattern, batch=args.batch, skip_bad=args.skip_bad,
    ))
    return 0
