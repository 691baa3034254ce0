"""The child process that trains a recipe's teacher (see :func:`medistill.distill.teacher.train_teacher_in_child`).

``python -m medistill.distill.teacher_child CONFIG_JSON [--verbose]`` trains (or reuses)
the teacher of a :class:`~medistill.distill.config.DistillConfig` into ``RUN/teacher/``.
It lives apart from :mod:`medistill.distill.teacher` because it runs a whole recipe
(:mod:`medistill.distill.runner`), which itself loads teachers.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from medistill.console import setup_logging
from medistill.distill.config import DistillConfig
from medistill.distill.recipes import get_recipe
from medistill.distill.runner import run_recipe
from medistill.distill.teacher import finished, teacher_folder
from medistill.errors import MedistillError
from medistill.train.config import TrainConfig
from medistill.train.supervised import train_supervised

log = logging.getLogger("medistill.distill")


def train_teacher(config, recipe_cls: type) -> Path:
    """Train (or reuse) the teacher of ``config`` in ``RUN/teacher`` in this process; return it."""
    folder = teacher_folder(config)
    options = recipe_cls.teacher_build_options(config)
    teacher_config = config.teacher_train_config(options, str(folder))
    if finished(folder):
        log.info("teacher: reusing the finished teacher in %s", folder)
        return folder
    log.info("teacher: training %s %s for %d epoch(s) into %s", teacher_config.student, options or "",
             teacher_config.epochs, folder)
    if recipe_cls.teacher_recipe is None:
        return train_supervised(teacher_config)
    return run_recipe(teacher_config, TrainConfig, recipe_cls.teacher_recipe, None)


def main(argv: list[str] | None = None) -> int:
    """The child process's entry point: ``CONFIG_JSON [--verbose]``."""
    argv = sys.argv[1:] if argv is None else argv
    setup_logging("--verbose" in argv)
    try:
        config = DistillConfig.from_dict(json.loads(argv[0]))
        train_teacher(config, get_recipe(config.recipe))
    except MedistillError as error:
        print(f"medistill: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
