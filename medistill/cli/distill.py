"""``medistill distill``: the supervised distillation recipes (KAMSD, CAKD+MSKD, SIKD, SSCD).

Every option of ``medistill train`` is accepted with the same meaning; the run folder
holds what the supervised trainer writes, so ``predict_eval.py`` evaluates it.

Example::

    python -m medistill distill --recipe kamsd --data phantoms --out runs/kamsd \\
        --train-teacher unet --teacher-epochs 30 --epochs 30
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from medistill.cli import train as train_cli
from medistill.cli.options import json_object

RECIPE_NAMES = ("kamsd", "cakd-mskd", "sikd", "sscd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_cli.add_arguments(parser)
    parser.set_defaults(student=None)
    parser._option_string_actions["--student"].help = (
        "unet, unetpp or lcovnet (default: the recipe's, lcovnet for cakd-mskd, else unet)")
    group = parser.add_argument_group("distillation")
    group.add_argument("--recipe", required=True, choices=RECIPE_NAMES, help="the distillation method")
    group.add_argument("--teacher-model", help="frozen teacher: a run folder holding model.keras, or a .keras file")
    group.add_argument("--train-teacher", metavar="NAME",
                       help="train the teacher NAME (unet, unetpp, lcovnet) first, into OUT/teacher "
                            "(SIKD: on class-wise averaged images)")
    group.add_argument("--teacher-options", default="{}", help="JSON builder options of the trained teacher")
    group.add_argument("--teacher-epochs", type=int, help="epochs of the trained teacher (default --epochs)")
    group.add_argument("--labelled-fraction", type=float, default=1.0,
                       help="SSCD: fraction of the training images used with their masks (the rest without)")
    group.add_argument("--recipe-options", default="{}", help="JSON options of the recipe (see its documentation)")
    group.add_argument("--mixed-precision", action="store_true", help="float16 compute on GPUs (ignored on CPUs)")


def config_from_args(args: argparse.Namespace):
    """The :class:`~medistill.distill.config.DistillConfig` the arguments describe."""
    from medistill.distill.config import DistillConfig

    values = {f.name: getattr(args, f.name) for f in fields(DistillConfig) if hasattr(args, f.name)}
    values.update(
        student=args.student or "",
        student_options=json_object(args.student_options, "--student-options"),
        teacher_options=json_object(args.teacher_options, "--teacher-options"),
        recipe_options=json_object(args.recipe_options, "--recipe-options"),
        clip_percentiles=list(args.clip_percentiles) if args.clip_percentiles else None,
    )
    return DistillConfig(**values)


def run(args: argparse.Namespace) -> int:
    from medistill.distill.runner import distill

    run_dir = distill(config_from_args(args))
    print(f"run folder: {run_dir}")
    return 0
