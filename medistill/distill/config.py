"""The configuration of a ``medistill distill`` run, saved as ``config.json``.

:class:`DistillConfig` is the supervised trainer's :class:`TrainConfig` (same settings,
same meaning, same resume rules) plus the distillation settings: the recipe, its
teacher (a saved model, or one trained first with ``--train-teacher``), the SSCD
labelled fraction, recipe options and mixed precision.

Example:

>>> config = DistillConfig(data="phantoms", out="runs/kamsd", recipe="kamsd",
...                        teacher_model="runs/teacher")
>>> config.student, config.labelled_fraction
('unet', 1.0)
>>> DistillConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medistill.errors import MedistillError
from medistill.train.config import TrainConfig, check_settings, student_checks
from medistill.train.run_folder import register_run_config


@register_run_config
@dataclass
class DistillConfig(TrainConfig):
    """Everything needed to rerun ``medistill distill``.

    ``student=""`` means the recipe's default student (``lcovnet`` for cakd-mskd,
    ``unet`` otherwise); it is filled in when the config is made. ``teacher_epochs``
    ``None`` means ``epochs``.
    """

    student: str = ""
    recipe: str = "kamsd"
    teacher_model: str | None = None
    train_teacher: str | None = None
    teacher_options: dict[str, Any] = field(default_factory=dict)
    teacher_epochs: int | None = None
    labelled_fraction: float = 1.0
    recipe_options: dict[str, Any] = field(default_factory=dict)
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        from medistill.distill.recipes import RECIPES

        checks = [
            (self.recipe in RECIPES, f"--recipe {self.recipe!r} is not a recipe; choose one of {', '.join(RECIPES)}"),
            (not (self.teacher_model and self.train_teacher),
             "give either --teacher-model PATH or --train-teacher NAME, not both"),
            (self.teacher_epochs is None or self.teacher_epochs >= 1, "--teacher-epochs must be at least 1"),
            (0.0 < self.labelled_fraction <= 1.0, "--labelled-fraction must be in (0, 1]"),
            (isinstance(self.teacher_options, dict), "--teacher-options must be a JSON object"),
            (isinstance(self.recipe_options, dict), "--recipe-options must be a JSON object"),
            (isinstance(self.student_options, dict), "--student-options must be a JSON object"),
        ]
        for ok, message in checks:
            if not ok:
                raise MedistillError(message)
        if not self.student:
            from medistill.distill.recipes import get_recipe

            self.student = get_recipe(self.recipe).default_student
            check_settings(student_checks(self))
        if self.train_teacher:
            from medistill.networks.registry import StudentError, check_student_options

            try:
                check_student_options(self.train_teacher, self.teacher_options, img_size=self.img_size)
            except StudentError as error:
                raise MedistillError(str(error).replace("--student-options", "--teacher-options")) from error

    def teacher_train_config(self, student_options: dict[str, Any], out: str) -> TrainConfig:
        """The supervised settings of a teacher trained by this run (``--train-teacher``).

        Every data, preprocessing and optimiser setting is this run's; the network is
        ``train_teacher`` with ``student_options``, trained for ``teacher_epochs``.
        """
        if not self.train_teacher:
            raise MedistillError("no --train-teacher given: this run trains no teacher")
        mine = self.to_dict()
        shared = {name: mine[name] for name in TrainConfig.__dataclass_fields__}
        shared.update(out=out, student=self.train_teacher, student_options=dict(student_options),
                      epochs=self.teacher_epochs or self.epochs, overwrite=False)
        return TrainConfig(**shared)
