"""The one configuration object of a supervised training run, saved as ``config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medistill.errors import MedistillError
from medistill.train.run_folder import register_run_config

# Fields that may change between a run and its resumption without making the saved
# checkpoint meaningless (the run is longer, more patient, or runs on other devices).
RESUMABLE_CHANGES = {"epochs", "patience", "cpu_replicas", "out", "overwrite", "steps_per_epoch"}


def common_checks(config: Any) -> list[tuple[bool, str]]:
    """The checks every trainer's config shares: size, channels, epochs, batch, validation split."""
    return [
        (isinstance(config.img_size, int) and config.img_size >= 16, "--img-size must be at least 16 (pixels)"),
        *student_checks(config),
        (config.channels in (1, 3), "--channels must be 1 or 3"),
        (config.epochs >= 1, "--epochs must be at least 1"),
        (config.batch >= 1, "--batch must be at least 1"),
        (0.0 <= config.val_fraction < 1.0, "--val-fraction must be in [0, 1)"),
    ]


def student_checks(config: Any) -> list[tuple[bool, str]]:
    """The student's options (names, types, ranges) and ``--img-size`` against its stride.

    A run whose student is not chosen yet (``student=""``) is checked once it is.
    """
    if not getattr(config, "student", "") or not isinstance(config.img_size, int) or config.img_size < 16:
        return []
    from medistill.networks.registry import StudentError, check_student_options

    try:
        check_student_options(config.student, config.student_options, img_size=config.img_size)
    except StudentError as error:
        return [(False, str(error))]
    return []


def check_mask_layout(config: Any) -> None:
    """Refuse ``--mask-suffix`` with ``--mask-pattern``, and a malformed pattern, before any file is read."""
    if not getattr(config, "mask_pattern", None):
        return
    if config.mask_suffix:
        raise MedistillError("give either --mask-suffix or --mask-pattern, not both")
    from medistill.data.mask_layout import MaskPattern

    MaskPattern(config.mask_pattern)


def check_settings(checks: list[tuple[bool, str]]) -> None:
    """Raise :class:`MedistillError` with the message of the first failed ``(ok, message)``."""
    for ok, message in checks:
        if not ok:
            raise MedistillError(message)


@register_run_config
@dataclass
class TrainConfig:
    """Everything needed to rerun ``medistill train``."""

    data: str
    out: str
    student: str = "unet"
    student_options: dict[str, Any] = field(default_factory=dict)
    img_size: int = 128
    channels: int = 1
    normalisation: str = "minmax"
    clip_percentiles: list[float] | None = None
    mask_suffix: str = ""
    mask_pattern: str | None = None
    mask_mode: str = "auto"
    num_classes: int | None = None
    epochs: int = 30
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    val_fraction: float = 0.2
    patience: int = 10
    augment: bool = True
    seed: int = 0
    steps_per_epoch: int | None = None
    min_steps_per_epoch: int = 10
    skip_bad: bool = False
    cpu_replicas: int = 1
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_settings(common_checks(self) + [
            (self.lr > 0, "--lr must be positive"),
            (self.min_steps_per_epoch >= 1, "--min-steps-per-epoch must be at least 1"),
            (self.optimizer in ("adam", "adamw"), "--optimizer must be adam or adamw"),
            (self.schedule in ("cosine", "constant"), "--schedule must be cosine or constant"),
            (self.num_classes is None or self.num_classes >= 2, "--num-classes counts background: at least 2"),
        ])
        check_mask_layout(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise MedistillError(f"unknown training settings in config: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise MedistillError(f"cannot read training config {path}: {error}") from error

    def differences(self, other: TrainConfig) -> list[str]:
        """Settings that differ from ``other`` and forbid resuming its checkpoint."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k]]
