"""The one trainer skeleton: a :class:`TrainingMethod` says what is trained, :func:`run_training` trains it.

Supervised training (:mod:`medistill.train.supervised`), MedDistill
(:mod:`medistill.distill.meddistill.trainer`) and the four recipes
(:mod:`medistill.distill.runner`) are training methods. What they share lives here,
once, in this order:

1. the run folder and the method's inputs are checked (:meth:`TrainingMethod.check_inputs`)
   before anything is written;
2. the run opens (:func:`~medistill.train.session.open_run`: strategy, run folder with
   ``config.json`` and its lock, log); a compatible earlier run is resumed;
3. the precision policy is set (``mixed_precision`` of the config; float32 on CPUs);
4. :meth:`~TrainingMethod.prepare` reads the data and returns how many examples one pass holds;
5. the epoch is planned (:class:`EpochPlan`: the global batch, a multiple of the replicas;
   small sets repeat within an epoch up to ``min_steps_per_epoch`` optimizer steps;
   ``steps_per_epoch`` caps it), and the seed is set;
6. :meth:`~TrainingMethod.build` creates the models and optimizers inside the strategy's scope;
7. batch norm is synchronised over replicas; the student's size is logged;
8. :class:`~medistill.train.loop.TrainingLoop` trains on :meth:`~TrainingMethod.epoch_data`,
   validates with :meth:`~TrainingMethod.validation`, checkpoints the student, its
   optimizer and :meth:`~TrainingMethod.trackables` every epoch, stops early;
9. the best epoch's weights are loaded and :meth:`~TrainingMethod.after_fit` checks them;
10. :func:`~medistill.train.session.finish_run` exports that checkpoint (``.keras`` +
    SavedModel + preprocessing card), curves and ``summary.json``.

Why not ``keras.distillation.Distiller`` itself: see docs/DESIGN.md ("The trainer skeleton").

Example (a complete method: a student trained on its own masks)::

    class PlainSupervised(TrainingMethod):
        config_cls = TrainConfig
        def prepare(self, session):
            self.train = training_samples(self.config.data, val_fraction=0)[0]
            return len(self.train)
        def build(self, session, plan):
            self.plan = plan
            self.student = build_student("unet", in_channels=1, num_classes=1)
            self.optimizer = keras.optimizers.Adam(1e-3)
            self.optimizer.build(self.student.trainable_variables)
        def epoch_data(self, epoch): ...   # batches of (x, y)
        def step(self, batch): ...         # per-example loss / global batch, gradients applied
        def card(self): return ModelCard(PreprocessConfig(size=128), 2)

    run_training(PlainSupervised(TrainConfig(data="phantoms", out="runs/plain")))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import keras
import tensorflow as tf

from medistill.distribute import barrier, chief_by_tf_config
from medistill.export import ModelCard
from medistill.networks import model_summary
from medistill.train.loop import LoopSettings, TrainingLoop, epoch_length
from medistill.train.precision import set_precision
from medistill.train.run_folder import check_run_folder
from medistill.train.session import RunSession, finish_run, open_run

log = logging.getLogger("medistill.train")


@dataclass(frozen=True)
class EpochPlan:
    """How one epoch is cut: the global batch, passes over the set, optimizer steps; the dtype policy."""

    batch: int
    passes: int
    steps: int
    policy: str = "float32"


class TrainingMethod:
    """What one kind of training supplies to :func:`run_training` (see the module docstring).

    Subclasses set ``config_cls`` (the run's configuration class, saved as ``config.json``)
    and implement :meth:`prepare`, :meth:`build`, :meth:`epoch_data`, :meth:`step` and
    :meth:`card`; ``build`` sets ``self.student`` (the model exported) and
    ``self.optimizer`` (checkpointed with it). The config needs ``out``, ``overwrite``,
    ``cpu_replicas``, ``seed``, ``batch``, ``epochs``, ``patience``, ``img_size``,
    ``channels`` and ``steps_per_epoch``; ``min_steps_per_epoch`` and
    ``mixed_precision`` are read when present.
    """

    config_cls: ClassVar[type]
    keras_name: ClassVar[str] = "model.keras"
    log_name: ClassVar[str] = "train.log"
    description: ClassVar[str] = "student"

    student: keras.Model
    optimizer: keras.optimizers.Optimizer

    def __init__(self, config: Any) -> None:
        self.config = config

    # -- before the run folder is touched ---------------------------------------
    def check_inputs(self) -> None:
        """Raise :class:`~medistill.errors.MedistillError` for bad inputs (nothing is written yet)."""

    # -- inside the open run --------------------------------------------------------
    def prepare(self, session: RunSession) -> int:
        """Read the data; return the number of training examples in one pass."""
        raise NotImplementedError

    def build(self, session: RunSession, plan: EpochPlan) -> None:
        """Create ``student``, ``optimizer`` and whatever :meth:`step` needs (called in the scope)."""
        raise NotImplementedError

    def epoch_data(self, epoch: int) -> tf.data.Dataset:
        """The global batches of ``epoch`` (the same in every process, so a resumed run matches)."""
        raise NotImplementedError

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        """One step on one replica: loss terms already divided by the global batch; gradients applied."""
        raise NotImplementedError

    def validation(self) -> Callable[[], dict] | None:
        """``() -> {"val_dice": …, …}`` on held-out data, or None (the loop then monitors the loss)."""
        return None

    def trackables(self) -> dict[str, Any]:
        """Checkpointed objects besides the student and its optimizer."""
        return {}

    def trained_models(self) -> list[keras.Model]:
        """The models whose batch norm is synchronised across replicas."""
        return [self.student]

    def min_epochs(self) -> int:
        """No early stop before this many epochs."""
        return 0

    def after_fit(self, session: RunSession, loop: TrainingLoop, history: list[dict]) -> None:
        """Checks on the best checkpoint (loaded when this runs) before the export."""

    def card(self) -> ModelCard:
        """The preprocessing card exported with the student."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """Entries of ``summary.json`` besides the loop's and the sizes."""
        return {}


def plan_epoch(session: RunSession, config: Any, count: int, policy: str) -> EpochPlan:
    """The :class:`EpochPlan` of ``count`` training examples under ``config``."""
    batch = session.global_batch(config.batch, count)
    passes, steps = epoch_length(count, batch, int(getattr(config, "min_steps_per_epoch", 1)))
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
    return EpochPlan(batch=batch, passes=passes, steps=steps, policy=policy)


def run_training(method: TrainingMethod) -> Path:
    """Train ``method`` into ``method.config.out`` (resuming a compatible run); return the run folder."""
    config = method.config
    if chief_by_tf_config():  # the chief alone writes (and locks) the run folder
        check_run_folder(config.out, method.config_cls, config.overwrite)
    method.check_inputs()
    previous_policy = keras.mixed_precision.global_policy().name
    try:
        with open_run(config, method.config_cls, cpu_replicas=config.cpu_replicas,
                      log_name=method.log_name) as session:
            return _train(method, session)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(method: TrainingMethod, session: RunSession) -> Path:
    config = method.config
    policy = set_precision(bool(getattr(config, "mixed_precision", False)))
    count = method.prepare(session)
    plan = plan_epoch(session, config, count, policy)
    keras.utils.set_random_seed(config.seed)  # same seed, same initial weights
    with session.scope():
        method.build(session, plan)
    session.synchronise_batchnorm(*method.trained_models())
    sizes = model_summary(method.student, (config.img_size, config.img_size, config.channels))
    log.info("%s %s: %s parameters, %.2f GFLOPs per image at %d px", method.description,
             getattr(config, "student", ""), f"{sizes['params']:,}", sizes["flops"] / 1e9, config.img_size)
    validate = method.validation()
    settings = LoopSettings(epochs=config.epochs, patience=config.patience,
                            monitor="val_dice" if validate else "loss", mode="max" if validate else "min",
                            steps_per_epoch=plan.steps, min_epochs=method.min_epochs(),
                            average_decay=float(getattr(config, "weight_average", 0.0) or 0.0))
    loop = TrainingLoop(session.strategy, session.run_dir, method.student, method.optimizer, method.step,
                        validate, settings, extra_trackables=method.trackables())
    history = loop.fit(method.epoch_data)
    # The chief has written best.weights.h5; every worker loads it, so all end alike.
    barrier(session.strategy)
    loop.load_best()
    method.after_fit(session, loop, history)
    finish_run(session, loop, method.student, method.card(), history,
               {**method.summary(), "global_batch": plan.batch, "steps_per_epoch": plan.steps,
                "passes_per_epoch": plan.passes, **sizes}, keras_name=method.keras_name)
    return session.run_dir
