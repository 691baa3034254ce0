"""``medistill meddistill`` (and ``meddistill.py``): distil a foundation model into a student, no labels.

Example::

    python meddistill.py --image_dir data/images --boxes boxes.json --teacher litemedsam \\
        --student unetpp --img-size 256 --epochs 100 --batch 8 --out runs/md

The teacher runs once per image into a cache (``--cache``, default RUN/teacher_cache.h5);
the same command resumes a killed run.
"""

from __future__ import annotations

import argparse
import json

from medistill.errors import MedistillError


def _json_option(text: str, option: str) -> dict | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise MedistillError(f"{option} is not valid JSON: {error}") from error
    if value is not None and not isinstance(value, dict):
        raise MedistillError(f"{option} must be a JSON object, e.g. '{{\"base_filters\": 16}}'")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data and teacher")
    data.add_argument("--image_dir", "--image-dir", dest="image_dir", required=True,
                      help="folder of the images named in the boxes file")
    data.add_argument("--boxes", required=True, help="boxes file (JSON) from detection.py predict or boxes-from-masks")
    data.add_argument("--teacher", default="litemedsam",
                      help="litemedsam | litemedsam:/path/to.pth | grabcut | sam:<preset-or-dir> | tiny-sam")
    data.add_argument("--cache", help="teacher cache (HDF5) to build or reuse (default OUT/teacher_cache.h5)")
    data.add_argument("--out", required=True, help="run folder (resumed when it holds the same run)")
    data.add_argument("--val-fraction", type=float, default=0.2,
                      help="images held out for the label-free validation (agreement with the teacher)")
    data.add_argument("--skip-empty", action="store_true",
                      help="drop training images without a box (released behaviour) instead of using them as negatives")
    data.add_argument("--live-teacher", action="store_true",
                      help="call the teacher at every training step instead of caching (benchmark mode)")

    student = parser.add_argument_group("student and preprocessing")
    student.add_argument("--student", default="unetpp", help="unet, unetpp or lcovnet (default unetpp)")
    student.add_argument("--student-options", default="{}", help='JSON options, e.g. \'{"base_filters": 16}\'')
    student.add_argument("--img-size", type=int, default=256, help="input size in pixels (multiple of 16)")
    student.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 = grey (default), 3 = RGB")
    student.add_argument("--clip-percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                         help="clip intensities to these percentiles before min-max (CT/MRI)")

    losses = parser.add_argument_group("losses")
    losses.add_argument("--weighting", default="ulwr", choices=("ulwr", "learned", "fixed"),
                        help="ulwr: released per-image rule from the teacher's uncertainty; learned: Kendall "
                        "log-variances; fixed: --fixed-weights")
    losses.add_argument("--fixed-weights", default="null",
                        help='JSON weights for --weighting fixed, e.g. \'{"bce": 1, "prob": 1, "feat": 0.5}\'')
    losses.add_argument("--feature-loss", default="mse", choices=("mse", "cosine"))
    losses.add_argument("--feature-layer",
                        help="student feature for the feature term (default: the one whose stride is closest "
                        "to the teacher's feature stride, e.g. stride 4 for LiteMedSAM)")
    losses.add_argument("--co-learn", action="store_true",
                        help="fine-tune LiteMedSAM's mask decoder jointly and refresh the targets")
    losses.add_argument("--refresh-every", type=int, default=5, metavar="K",
                        help="co-learn: recompute the targets from the decoder every K epochs")
    losses.add_argument("--decoder-lr", type=float, default=1e-5, help="co-learn: the decoder's learning rate")
    losses.add_argument("--colearn-confidence", type=float, default=0.9,
                        help="co-learn: student pixels this confident (and agreeing with the teacher) "
                        "teach the decoder")

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=100)
    training.add_argument("--batch", type=int, default=8, help="global batch size")
    training.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    training.add_argument("--patience", type=int, default=20, help="early stop after this many epochs without gain")
    training.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                          help="random flips of image, soft mask and features together (default on)")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--steps-per-epoch", type=int, help="cap the steps of an epoch (quick runs)")
    training.add_argument("--mixed-precision", action="store_true", help="mixed_float16 on GPUs (ignored on CPUs)")
    training.add_argument("--no-sync-batchnorm", dest="sync_batchnorm", action="store_false",
                          help="per-replica batch-norm statistics (default: synchronised across replicas)")
    training.add_argument("--cpu-replicas", type=int, default=1,
                          help="split the CPU into N logical devices (tests multi-replica code without GPUs)")
    training.add_argument("--resume", action="store_true",
                          help="fail unless OUT holds a run to resume (resuming itself is automatic)")
    training.add_argument("--overwrite", action="store_true", help="replace the run in --out instead of resuming")


def config_from_args(args: argparse.Namespace):
    """The :class:`MedDistillConfig` of parsed arguments."""
    from medistill.distill.meddistill.config import MedDistillConfig

    return MedDistillConfig(
        image_dir=args.image_dir, boxes=args.boxes, out=args.out, teacher=args.teacher, cache=args.cache,
        student=args.student, student_options=_json_option(args.student_options, "--student-options") or {},
        img_size=args.img_size, channels=args.channels,
        clip_percentiles=list(args.clip_percentiles) if args.clip_percentiles else None,
        epochs=args.epochs, batch=args.batch, lr=args.lr, val_fraction=args.val_fraction,
        patience=args.patience, augment=args.augment, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
        weighting=args.weighting, fixed_weights=_json_option(args.fixed_weights, "--fixed-weights"),
        feature_loss=args.feature_loss, feature_layer=args.feature_layer, co_learn=args.co_learn,
        refresh_every=args.refresh_every, decoder_lr=args.decoder_lr,
        colearn_confidence=args.colearn_confidence, skip_empty=args.skip_empty,
        live_teacher=args.live_teacher, sync_batchnorm=args.sync_batchnorm,
        mixed_precision=args.mixed_precision, cpu_replicas=args.cpu_replicas, overwrite=args.overwrite,
    )


def run(args: argparse.Namespace) -> int:
    from medistill.distill.meddistill.trainer import train_meddistill

    run_dir = train_meddistill(config_from_args(args), require_resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0
