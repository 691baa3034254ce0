"""``medistill meddistill`` (and ``meddistill.py``): distil a foundation model into a student, no labels.

Example::

    python meddistill.py --image_dir data/images --boxes boxes.json --teacher litemedsam \\
        --img-size 256 --epochs 100 --batch 8 --out runs/md

The teacher runs once per image into a cache (``--cache``, default RUN/teacher_cache.h5);
the same command resumes a killed run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medistill.cli.options import json_object
from medistill.cli.teach_run import add_runtime_arguments, runtime_from_args
from medistill.distill.terms import DEFAULT_TERMS, SCHEDULES, TERM_NAMES, WEIGHTINGS
from medistill.errors import MedistillError
from medistill.teachers.cache_storage import STORAGES

log = logging.getLogger("medistill.distill")
# The exit status of a run whose student collapsed (kept with --keep-collapsed).
COLLAPSED_EXIT = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data and teacher")
    data.add_argument("--image_dir", "--image-dir", dest="image_dir", required=True,
                      help="folder of the images named in the boxes file")
    data.add_argument("--boxes", required=True, help="boxes file (JSON) from detection.py predict or boxes-from-masks")
    data.add_argument("--teacher", default="litemedsam",
                      help="litemedsam | litemedsam:/path/to.pth | grabcut | sam:<preset-or-dir> | tiny-sam")
    data.add_argument("--cache", help="teacher cache (HDF5) to build or reuse (default OUT/teacher_cache.h5)")
    data.add_argument("--cache-features", default="compact", choices=STORAGES,
                      help="how a new teacher cache stores features: compact (default: pooled 2x2, 8 bits, ~0.3 MB "
                      "an image; exact for students up to 128 px) or full (~2 MB; --co-learn always uses full)")
    data.add_argument("--out", required=True, help="run folder (resumed when it holds the same run)")
    data.add_argument("--val-fraction", type=float, default=0.2,
                      help="images held out for the label-free validation (agreement with the teacher)")
    data.add_argument("--skip-empty", action="store_true",
                      help="drop training images without a box (released behaviour) instead of using them as negatives")
    data.add_argument("--negatives", default="auto", choices=("auto", "all", "none"),
                      help="images without a box: auto (default) trusts them as empty only with evidence (boxes "
                      "from masks, or confirmed by a refinement round) and counts the others half; all: every "
                      "one is a negative; none: left out")
    data.add_argument("--quality-control", action=argparse.BooleanOptionalAction, default=True,
                      help="down-weight or drop poor teacher masks by their quality records (default on)")
    data.add_argument("--tight-boxes", action=argparse.BooleanOptionalAction, default=False,
                      help="the box-projection term uses each box tightened to the teacher's mask inside it, so a "
                      "loose detector box does not pull the student's mask out to its edges (default off)")
    data.add_argument("--live-teacher", action="store_true",
                      help="call the teacher at every training step instead of caching (benchmark mode)")
    add_runtime_arguments(parser)

    student = parser.add_argument_group("student and preprocessing")
    student.add_argument("--student", default="unet",
                         help="unet (default, with base_filters 16: fast on a CPU), unetpp or lcovnet")
    student.add_argument("--student-options", default='{"base_filters": 16}',
                         help='JSON options (default \'{"base_filters": 16}\')')
    student.add_argument("--init-from", help="start the student from this MedDistill run folder's weights")
    student.add_argument("--img-size", type=int, default=256, help="input size in pixels (multiple of 16)")
    student.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 = grey (default), 3 = RGB")
    student.add_argument("--clip-percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                         help="clip intensities to these percentiles before min-max (CT/MRI)")

    losses = parser.add_argument_group("losses")
    losses.add_argument("--terms", default=",".join(DEFAULT_TERMS),
                        help=f"comma-separated loss terms from {', '.join(TERM_NAMES)} (default "
                        f"{','.join(DEFAULT_TERMS)}; feat only with a teacher that has features). The released "
                        "MedDistill: --terms bce,prob,feat --weighting ulwr --no-confidence --negatives all")
    losses.add_argument("--confidence", action=argparse.BooleanOptionalAction, default=True,
                        help="weight the BCE per pixel by the teacher's confidence |2S-1| (default on)")
    losses.add_argument("--weighting", default="learned", choices=WEIGHTINGS,
                        help="learned (default): Kendall uncertainty weighting of every term; ulwr: the released "
                        "per-image rule from the teacher's uncertainty (bce, prob, feat; other terms weight 1); "
                        "fixed: --fixed-weights")
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
    training.add_argument("--epochs", type=int, default=100, help="epochs (default 100)")
    training.add_argument("--batch", type=int, default=8, help="global batch size (default 8)")
    training.add_argument("--lr", type=float, default=3e-3,
                          help="Adam learning rate (default 3e-3; the paper's 1e-4 leaves small sets "
                          "half-trained; `medistill train` uses 1e-3 on exact masks)")
    training.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                          help="learning rate over the run: a cosine from --lr down to 1 %% of it at --epochs "
                          "(default cosine: on the demo's phantoms it beat a constant rate in 5 of 5 paired "
                          "runs), or constant (the released code's)")
    training.add_argument("--noise-floor", type=float, default=0.25, metavar="FACTOR",
                          help="the exported student drops predicted components smaller than FACTOR x the "
                          "5th percentile of its teacher's component areas on the training images "
                          "(default 0.25; 0: off). `medistill predict --no-noise-floor` ignores it")
    training.add_argument("--weight-average", type=float, default=0.0, metavar="DECAY",
                          help="validate, select and export a moving average of the student's weights "
                          "(decay per step, e.g. 0.99; default 0: the weights as trained)")
    training.add_argument("--patience", type=int, default=20,
                          help="early stop after this many epochs without gain (default 20, a fifth of the "
                          "default 100 epochs, and never before --min-epochs; `medistill train`: 10 of 30)")
    training.add_argument("--min-epochs", type=int,
                          help="never stop early before this many epochs (default half of --epochs: students "
                          "learn the background first and find small targets late)")
    training.add_argument("--min-steps-per-epoch", type=int, default=10,
                          help="small sets repeat within an epoch until it has this many optimizer steps (default 10)")
    training.add_argument("--rounds", type=int, default=1,
                          help="refinement rounds: the student's masks prompt the teacher again (default 1)")
    training.add_argument("--keep-collapsed", action="store_true",
                          help="exit 0 and keep the student even when it collapsed to predicting nothing")
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
        cache_features=args.cache_features,
        student=args.student, student_options=json_object(args.student_options, "--student-options"),
        img_size=args.img_size, channels=args.channels,
        clip_percentiles=list(args.clip_percentiles) if args.clip_percentiles else None,
        epochs=args.epochs, batch=args.batch, lr=args.lr, schedule=args.schedule,
        weight_average=args.weight_average, noise_floor=args.noise_floor, val_fraction=args.val_fraction,
        patience=args.patience, min_epochs=args.min_epochs, min_steps_per_epoch=args.min_steps_per_epoch,
        augment=args.augment, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
        terms=parse_terms(args.terms), confidence=args.confidence, negatives=args.negatives,
        quality_control=args.quality_control, tight_boxes=args.tight_boxes, init_from=args.init_from,
        rounds=args.rounds,
        keep_collapsed=args.keep_collapsed,
        weighting=args.weighting, fixed_weights=json_object(args.fixed_weights, "--fixed-weights", allow_null=True),
        feature_loss=args.feature_loss, feature_layer=args.feature_layer, co_learn=args.co_learn,
        refresh_every=args.refresh_every, decoder_lr=args.decoder_lr,
        colearn_confidence=args.colearn_confidence, skip_empty=args.skip_empty,
        live_teacher=args.live_teacher, sync_batchnorm=args.sync_batchnorm,
        mixed_precision=args.mixed_precision, cpu_replicas=args.cpu_replicas, overwrite=args.overwrite,
        teacher_runtime=runtime_from_args(args).to_dict(),
    )


def parse_terms(text: str) -> list[str]:
    """``"bce,dice"`` → ``["bce", "dice"]``; unknown names are refused naming ``--terms``."""
    terms = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in terms if t not in TERM_NAMES]
    if not terms or unknown:
        raise MedistillError(f"--terms {text!r}: unknown or no term(s) {unknown}; choose from {', '.join(TERM_NAMES)}")
    return terms


def collapse_status(run_dir: Path, keep: bool) -> int:
    """The exit status for a finished run: :data:`COLLAPSED_EXIT` when its student collapsed (unless ``keep``)."""
    try:
        record = json.loads((run_dir / "summary.json").read_text()).get("collapse") or {}
    except (OSError, ValueError):
        return 0
    if not record.get("collapsed"):
        return 0
    if keep:
        log.warning("the student collapsed (%s); kept because of --keep-collapsed", record.get("reason"))
        return 0
    print(f"medistill: error: the student in {run_dir} collapsed: {record.get('reason')}. See "
          "summary.json ('collapse'); rerun with more epochs or the default --terms, or pass "
          "--keep-collapsed to accept it", file=sys.stderr)
    return COLLAPSED_EXIT


def run(args: argparse.Namespace) -> int:
    from medistill.distill.meddistill.trainer import train_meddistill

    config = config_from_args(args)  # its teacher_runtime is used by every teacher of the run
    if config.rounds > 1:
        from medistill.distill.meddistill.rounds import run_rounds

        if args.resume and not (Path(config.out) / "rounds").is_dir():
            raise MedistillError(f"--resume: {config.out} holds no refinement rounds to resume; "
                                 "run without --resume to start them")
        run_dir = run_rounds(config)
    else:
        run_dir = train_meddistill(config, require_resume=args.resume)
    print(f"run folder: {run_dir}")
    return collapse_status(Path(run_dir), config.keep_collapsed)
