"""``medistill train``: the supervised baseline."""

from __future__ import annotations

import argparse

from medistill.cli.options import add_mask_options, json_object


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data-set folder: images/ + masks/, or train/ (val/) inside")
    parser.add_argument("--out", required=True, help="run folder (resumed when it holds the same run)")
    parser.add_argument("--student", default="unet", help="unet, unetpp or lcovnet (default unet)")
    parser.add_argument("--student-options", default="{}", help='JSON options for the student, e.g. \'{"base_filters": 16}\'')
    parser.add_argument("--img-size", type=int, default=128, help="working size in pixels (multiple of 16)")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 = grey, 3 = RGB")
    parser.add_argument("--normalisation", default="minmax", choices=("minmax", "zscore"))
    parser.add_argument("--clip-percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="clip intensities to these percentiles first (CT/MRI), e.g. 0.5 99.5")
    add_mask_options(parser)
    parser.add_argument("--num-classes", type=int, help="classes incl. background (default: from the masks)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="global batch size")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="peak learning rate (default 1e-3, the supervised recipes' common value; "
                        "meddistill.py's default is 3e-3 and detection.py's lr0 0.003: each command's "
                        "default suits its own targets and model)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--optimizer", default="adamw", choices=("adam", "adamw"))
    parser.add_argument("--schedule", default="cosine", choices=("cosine", "constant"))
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held out when there is no val/ split")
    parser.add_argument("--patience", type=int, default=10,
                        help="early stop after this many epochs without a better validation Dice "
                        "(default 10, a third of the default 30 epochs; meddistill.py: 20 of 100, "
                        "detection.py: 50, since mAP on a small validation split is noisy)")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-per-epoch", type=int, help="cap the steps of an epoch (quick runs)")
    parser.add_argument("--min-steps-per-epoch", type=int, default=10,
                        help="small sets repeat within an epoch until it has this many optimizer steps (default 10)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable or mismatched files with a warning")
    parser.add_argument("--cpu-replicas", type=int, default=1,
                        help="split the CPU into N logical devices (tests multi-replica code without GPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out instead of resuming")


def run(args: argparse.Namespace) -> int:
    from medistill.train import TrainConfig, train_supervised

    options = json_object(args.student_options, "--student-options")
    config = TrainConfig(
        data=args.data, out=args.out, student=args.student, student_options=options,
        img_size=args.img_size, channels=args.channels, normalisation=args.normalisation,
        clip_percentiles=list(args.clip_percentiles) if args.clip_percentiles else None,
        mask_suffix=args.mask_suffix, mask_pattern=args.mask_pattern, mask_mode=args.mask_mode,
        num_classes=args.num_classes,
        epochs=args.epochs, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
        optimizer=args.optimizer, schedule=args.schedule, val_fraction=args.val_fraction,
        patience=args.patience, augment=args.augment, seed=args.seed,
        steps_per_epoch=args.steps_per_epoch, min_steps_per_epoch=args.min_steps_per_epoch, skip_bad=args.skip_bad,
        cpu_replicas=args.cpu_replicas, overwrite=args.overwrite,
    )
    run_dir = train_supervised(config)
    print(f"run folder: {run_dir}")
    return 0
