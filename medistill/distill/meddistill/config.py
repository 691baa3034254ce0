"""The one configuration object of a MedDistill run, saved as ``RUN/config.json``.

Every setting of ``meddistill.py`` lives here, preprocessing included, so that
``config.json`` is enough to rerun the run. Rerunning the same command in the same
folder resumes it; a change of any setting outside :data:`RESUMABLE_CHANGES` is refused.

Example:

>>> config = MedDistillConfig(image_dir="data/images", boxes="boxes.json", out="runs/md",
...                           teacher="grabcut", img_size=64)
>>> config.preprocess().size
64
>>> MedDistillConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medistill.data.preprocess import PreprocessConfig
from medistill.distill.terms import DEFAULT_TERMS, SCHEDULES, TERM_NAMES, WEIGHTINGS
from medistill.errors import MedistillError
from medistill.teachers.cache_storage import STORAGES
from medistill.train.config import RESUMABLE_CHANGES as TRAIN_RESUMABLE_CHANGES
from medistill.train.config import TrainConfig, check_settings, common_checks
from medistill.train.run_folder import register_run_config

# Besides the supervised ones (length, patience, devices, folder): the cache may move,
# it is checked against the teacher and the boxes file by itself; keeping a collapsed
# student is decided at the end, and so is the noise floor written into the model card.
RESUMABLE_CHANGES = set(TRAIN_RESUMABLE_CHANGES) | {"cache", "keep_collapsed", "noise_floor"}

# The teacher-runtime settings that change the teacher's masks (the others change only its speed).
TARGET_RUNTIME_FIELDS = ("precision", "resize")

FEATURE_LOSSES = ("mse", "cosine")
NEGATIVE_RULES = ("auto", "all", "none")
CACHE_NAME = "teacher_cache.h5"
DEFAULT_STUDENT_OPTIONS = {"base_filters": 16}


def default_runtime() -> dict[str, Any]:
    """The default teacher runtime's settings (``TeacherRuntime().to_dict()``)."""
    from medistill.teachers.registry import TeacherRuntime

    return TeacherRuntime().to_dict()


def runtime_checks(runtime: dict[str, Any]) -> list[tuple[bool, str]]:
    """``teacher_runtime`` must make a :class:`~medistill.teachers.registry.TeacherRuntime`."""
    from medistill.teachers.registry import TeacherRuntime

    try:
        TeacherRuntime(**runtime)
    except TypeError as error:
        return [(False, f"teacher_runtime {runtime!r}: {error}")]
    except MedistillError as error:
        return [(False, str(error))]
    return []


@register_run_config
@dataclass
class MedDistillConfig:
    """Everything needed to rerun ``meddistill.py`` (see ``--help`` for each setting)."""

    image_dir: str
    boxes: str
    out: str
    teacher: str = "litemedsam"
    cache: str | None = None
    cache_features: str = "compact"
    student: str = "unet"
    student_options: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_STUDENT_OPTIONS))
    img_size: int = 256
    channels: int = 1
    clip_percentiles: list[float] | None = None
    epochs: int = 100
    batch: int = 8
    lr: float = 3e-3
    schedule: str = "cosine"
    weight_average: float = 0.0
    noise_floor: float = 0.25
    val_fraction: float = 0.2
    patience: int = 20
    min_epochs: int | None = None
    min_steps_per_epoch: int = 10
    augment: bool = True
    seed: int = 0
    steps_per_epoch: int | None = None
    terms: list[str] = field(default_factory=lambda: list(DEFAULT_TERMS))
    confidence: bool = True
    negatives: str = "auto"
    quality_control: bool = True
    tight_boxes: bool = False
    weighting: str = "learned"
    fixed_weights: dict[str, float] | None = None
    feature_loss: str = "mse"
    feature_layer: str | None = None
    co_learn: bool = False
    refresh_every: int = 5
    decoder_lr: float = 1e-5
    colearn_confidence: float = 0.9
    skip_empty: bool = False
    live_teacher: bool = False
    sync_batchnorm: bool = True
    mixed_precision: bool = False
    cpu_replicas: int = 1
    keep_collapsed: bool = False
    init_from: str | None = None
    rounds: int = 1
    teacher_runtime: dict[str, Any] = field(default_factory=lambda: default_runtime())
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_settings(common_checks(self) + [
            (self.lr > 0 and self.decoder_lr > 0, "--lr and --decoder-lr must be positive"),
            (self.weighting in WEIGHTINGS, f"--weighting must be one of {', '.join(WEIGHTINGS)}"),
            (self.feature_loss in FEATURE_LOSSES, f"--feature-loss must be one of {', '.join(FEATURE_LOSSES)}"),
            (self.refresh_every >= 1, "--refresh-every must be at least 1 (epochs)"),
            (0.5 <= self.colearn_confidence < 1.0, "--colearn-confidence must be in [0.5, 1)"),
            (self.cpu_replicas >= 1, "--cpu-replicas must be at least 1"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "--steps-per-epoch must be at least 1"),
            (self.min_steps_per_epoch >= 1, "--min-steps-per-epoch must be at least 1"),
            (self.min_epochs is None or self.min_epochs >= 0, "--min-epochs must be 0 or more"),
            (self.rounds >= 1, "--rounds must be at least 1"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.cache_features in STORAGES, f"--cache-features must be one of {', '.join(STORAGES)}"),
            (self.noise_floor >= 0, "--noise-floor must be 0 (off) or a positive factor (default 0.25)"),
            (0.0 <= self.weight_average < 1.0, "--weight-average must be in [0, 1) (0: off; e.g. 0.99)"),
            *runtime_checks(self.teacher_runtime),
            (self.negatives in NEGATIVE_RULES, f"--negatives must be one of {', '.join(NEGATIVE_RULES)}"),
            (isinstance(self.terms, (list, tuple)) and len(self.terms) > 0
             and set(self.terms) <= set(TERM_NAMES) and len(set(self.terms)) == len(self.terms),
             f"--terms must list distinct loss terms from {', '.join(TERM_NAMES)}, e.g. bce,dice,proj"),
        ])
        if self.weighting == "ulwr" and not {"bce", "prob"} <= set(self.terms):
            raise MedistillError("--weighting ulwr needs the terms bce and prob (the released rule weights them); "
                                 "add them to --terms or choose --weighting learned")
        self._check_weights()
        if self.co_learn and self.live_teacher:
            raise MedistillError("--co-learn fine-tunes the teacher's decoder from cached embeddings; "
                                 "it cannot run with --live-teacher (drop one of them)")
        if self.co_learn and self.teacher.partition(":")[0] != "litemedsam":
            raise MedistillError(f"--co-learn fine-tunes LiteMedSAM's mask decoder; it needs --teacher litemedsam "
                                 f"(or litemedsam:/path/to.pth), not {self.teacher!r}")

    def _check_weights(self) -> None:
        if self.weighting != "fixed":
            if self.fixed_weights is not None:
                raise MedistillError("--fixed-weights is used only with --weighting fixed")
            return
        weights = self.fixed_weights
        if not isinstance(weights, dict) or not weights:
            raise MedistillError('--weighting fixed needs --fixed-weights, e.g. \'{"bce": 1, "prob": 1, "feat": 0.5}\'')
        unknown = sorted(set(weights) - set(TERM_NAMES))
        if unknown:
            raise MedistillError(f"--fixed-weights: unknown term(s) {unknown}; the terms are {', '.join(TERM_NAMES)}")
        bad = [k for k, v in weights.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0]
        if bad:
            raise MedistillError(f"--fixed-weights: the weight(s) of {', '.join(bad)} must be numbers >= 0")

    # -- derived settings -------------------------------------------------------------
    def preprocess(self) -> PreprocessConfig:
        """MedDistill's preprocessing: grey (or RGB), per-image min-max, SAM-style padding."""
        clip = tuple(self.clip_percentiles) if self.clip_percentiles else None
        return PreprocessConfig(size=self.img_size, channels=self.channels, normalisation="minmax",
                                clip_percentiles=clip)

    def early_stop_floor(self) -> int:
        """Epochs before early stopping may act (``--min-epochs``, default half of ``--epochs``)."""
        return self.epochs // 2 if self.min_epochs is None else self.min_epochs

    def cache_storage(self) -> str:
        """How the teacher cache stores features: ``--cache-features``, but always full for ``--co-learn``
        (its decoder reads the cached embedding as computed)."""
        return "full" if self.co_learn else self.cache_features

    def cache_path(self) -> Path:
        """``--cache``, or ``RUN/teacher_cache.h5``."""
        return Path(self.cache) if self.cache else Path(self.out) / CACHE_NAME

    # -- saving and comparing (the same rules as the supervised TrainConfig) ---------
    to_dict = TrainConfig.to_dict
    from_dict = classmethod(TrainConfig.from_dict.__func__)
    load = classmethod(TrainConfig.load.__func__)

    def runtime(self):
        """The :class:`~medistill.teachers.registry.TeacherRuntime` every teacher of this run uses."""
        from medistill.teachers.registry import TeacherRuntime

        return TeacherRuntime(**self.teacher_runtime)

    def differences(self, other: MedDistillConfig) -> list[str]:
        """Settings that differ from ``other`` and forbid resuming its checkpoint.

        Of the teacher runtime only what changes the targets counts (precision, resize):
        backends agree within the parity tolerance, batch and threads change only speed.
        """
        mine, theirs = self.to_dict(), other.to_dict()
        mine["teacher_runtime"], theirs["teacher_runtime"] = (
            {k: v for k, v in {**default_runtime(), **(config.get("teacher_runtime") or {})}.items()
             if k in TARGET_RUNTIME_FIELDS}
            for config in (mine, theirs))
        return [k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs.get(k)]
