"""A custom training loop under ``tf.distribute`` that survives being killed.

The loop owns what every recipe shares: distributing the data, running a step on each
replica, summing the replicas' loss terms, the progress bar, per-epoch validation,
best-checkpoint selection, early stopping, NaN detection, the CSV/TensorBoard logs and
the checkpoint that lets the same command resume after ``kill -9``. A recipe supplies
only its step function (losses and gradients) and its validation function.

Example (a recipe's side)::

    def step(batch):                     # runs on each replica, inside strategy.run
        x, y = batch
        with tf.GradientTape() as tape:
            per_example = my_loss(y, model(x, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=gb)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return {"loss": loss}

    loop = TrainingLoop(strategy, run_dir, model, optimizer, step, validate, epochs=10)
    history = loop.fit(lambda: train_dataset)
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from medistill.distribute import describe, is_chief, mean_across_workers
from medistill.errors import MedistillError
from medistill.fileio import atomic_path
from medistill.train.averaging import WeightAverage

log = logging.getLogger("medistill.train")

StepFn = Callable[[object], dict]
ValidateFn = Callable[[], dict]


def epoch_length(count: int, batch: int, min_steps: int) -> tuple[int, int]:
    """``(passes, steps)`` of an epoch: at least ``min_steps`` optimizer steps, whole passes over the set.

    >>> epoch_length(12, 8, 10), epoch_length(400, 8, 10)
    ((7, 10), (1, 50))
    """
    steps = max(1, count // batch)
    if steps >= min_steps:
        return 1, steps
    passes = math.ceil(min_steps * batch / count)
    return passes, (passes * count) // batch



class NonFiniteLossError(MedistillError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class LoopSettings:
    """What the loop needs to know beyond the model: length, patience, monitor."""

    epochs: int
    patience: int = 10
    monitor: str = "val_dice"
    mode: str = "max"
    steps_per_epoch: int | None = None
    keep_checkpoints: int = 2
    min_epochs: int = 0  # no early stop before this many epochs (a slow start is not convergence)
    average_decay: float = 0.0  # > 0: validate, select and export a moving average of the weights


class TrainingLoop:
    """Runs epochs of ``step_fn`` under ``strategy`` with checkpoints in ``run_dir``."""

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        run_dir: str | Path,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        step_fn: StepFn,
        validate_fn: ValidateFn | None,
        settings: LoopSettings,
        extra_trackables: dict | None = None,
    ) -> None:
        self.strategy = strategy
        self.run_dir = Path(run_dir)
        self.model = model
        self.settings = settings
        self.validate_fn = validate_fn
        self.chief = is_chief(strategy)
        with strategy.scope():
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            start = -math.inf if settings.mode == "max" else math.inf
            self.best = tf.Variable(start, dtype=tf.float64, trainable=False, name="best")
            self.best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch")
            self.stopped = tf.Variable(False, trainable=False, name="stopped")
        trackables = dict(extra_trackables or {})
        self.average = None
        if settings.average_decay > 0:
            self.average = WeightAverage(model, settings.average_decay, strategy)
            trackables["weight_average"] = self.average
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self.epoch, best=self.best,
            best_epoch=self.best_epoch, stopped=self.stopped, **trackables,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._checkpoint_dir(), max_to_keep=settings.keep_checkpoints
        )
        self._distributed_step = self._make_distributed_step(step_fn)

    # -- paths -----------------------------------------------------------------
    @property
    def history_path(self) -> Path:
        return self.run_dir / "history.csv"

    @property
    def best_weights_path(self) -> Path:
        return self.run_dir / "best.weights.h5"

    def _checkpoint_dir(self) -> str:
        if self.chief:
            return str(self.run_dir / "checkpoints")
        # Every worker must take part in saving; only the chief's copy is kept.
        return tempfile.mkdtemp(prefix="medistill-worker-ckpt-")

    # -- resume ----------------------------------------------------------------
    def restore(self) -> int:
        """Restore the newest checkpoint if there is one; return the epochs done."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            latest = tf.train.latest_checkpoint(str(self.run_dir / "checkpoints"))
        if latest is None:
            return 0
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as error:
            raise MedistillError(
                f"cannot resume from checkpoint {latest}: {error}. The run folder holds a "
                "checkpoint from other settings or a damaged file; use a new --out folder "
                "or pass --overwrite to start again."
            ) from error
        done = int(self.epoch.numpy())
        log.info("resuming from %s: %d epoch(s) already done, best %s %.4f at epoch %d",
                 latest, done, self.settings.monitor, float(self.best.numpy()),
                 int(self.best_epoch.numpy()) + 1)
        return done

    def _load_history(self, done: int) -> list[dict]:
        if done == 0 or not self.history_path.exists():
            return []
        table = pd.read_csv(self.history_path)
        return table[table["epoch"] <= done].to_dict("records")

    # -- one epoch -------------------------------------------------------------
    def _make_distributed_step(self, step_fn: StepFn):
        strategy = self.strategy

        average = self.average

        @tf.function
        def distributed_step(batch):
            per_replica = strategy.run(step_fn, args=(batch,))
            if average is not None:  # after the step's update, in the same graph call
                average.update()
            return {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                    for name, value in per_replica.items()}

        return distributed_step

    def _train_epoch(self, dataset: tf.data.Dataset, epoch: int) -> dict:
        steps = self.settings.steps_per_epoch
        cardinality = int(dataset.cardinality().numpy())  # negative when unknown or infinite
        total = min((n for n in (steps, cardinality) if n and n > 0), default=None)
        distributed = self.strategy.experimental_distribute_dataset(dataset)
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{self.settings.epochs}", unit="step",
                   leave=False, disable=not self.chief, dynamic_ncols=True)
        for batch in distributed:
            terms = {name: float(value.numpy()) for name, value in self._distributed_step(batch).items()}
            self._check_finite(terms, epoch, count)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
            bar.update(1)
            bar.set_postfix({k: f"{v / count:.4f}" for k, v in sums.items() if k == "loss"})
            if steps and count >= steps:
                break
        bar.close()
        if count == 0:
            raise MedistillError("the training data set produced no batch: add images or lower --batch")
        return {name: value / count for name, value in sums.items()}

    def _check_finite(self, terms: dict, epoch: int, step: int) -> None:
        bad = [name for name, value in terms.items() if not math.isfinite(value)]
        if not bad:
            return
        kept = self.manager.latest_checkpoint or "none yet"
        raise NonFiniteLossError(
            f"loss term(s) {', '.join(bad)} became non-finite at epoch {epoch + 1}, step "
            f"{step + 1}. The last good checkpoint is kept ({kept}); lower the learning "
            "rate or check the data (constant images, wrong mask values) and run again."
        )

    def _improved(self, value: float) -> bool:
        best = float(self.best.numpy())
        return value > best if self.settings.mode == "max" else value < best

    # -- the whole run ---------------------------------------------------------
    def fit(self, make_dataset: Callable[[int], tf.data.Dataset]) -> list[dict]:
        """Train until ``epochs`` or early stopping; returns the history rows.

        ``make_dataset(epoch)`` gives the epoch's training data (global batches).
        """
        done = self.restore()
        history = self._load_history(done)
        if bool(self.stopped.numpy()) or done >= self.settings.epochs:
            log.info("training already complete (%d epoch(s)); nothing to do", done)
            return history
        log.info("training on %s", describe(self.strategy))
        writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard")) if self.chief else None
        for epoch in range(done, self.settings.epochs):
            row = {"epoch": epoch + 1, **self._train_epoch(make_dataset(epoch), epoch)}
            with self._evaluated_weights():
                if self.validate_fn is not None:
                    row.update(mean_across_workers(self.strategy, self.validate_fn()))
                row["lr"] = _current_lr(self.checkpoint.optimizer)
                self._judge_epoch(row, epoch)
            history.append(row)
            # The history first: a run killed between the two resumes from the older
            # checkpoint and drops the newer row, instead of losing a row.
            self._write_logs(history, row, writer)
            self.epoch.assign(epoch + 1)
            self.manager.save(checkpoint_number=epoch + 1)
            log.info("epoch %d/%d: %s", epoch + 1, self.settings.epochs,
                     ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
            if bool(self.stopped.numpy()):
                log.info("early stop: no improvement of %s for %d epoch(s)",
                         self.settings.monitor, self.settings.patience)
                break
        return history

    def _evaluated_weights(self):
        """The weights validated and kept as the best: the moving average when there is one."""
        return self.average.swapped_in() if self.average is not None else contextlib.nullcontext()

    def _judge_epoch(self, row: dict, epoch: int) -> None:
        """Keep the best weights and decide on early stopping."""
        monitored = row.get(self.settings.monitor)
        if monitored is None:
            monitored = -row["loss"] if self.settings.mode == "max" else row["loss"]
        if self._improved(float(monitored)):
            self.best.assign(float(monitored))
            self.best_epoch.assign(epoch)
            if self.chief:
                with atomic_path(self.best_weights_path) as tmp:
                    self.model.save_weights(str(tmp))
        elif (epoch - int(self.best_epoch.numpy()) >= self.settings.patience
              and epoch + 1 >= self.settings.min_epochs):
            self.stopped.assign(True)

    def _write_logs(self, history: list[dict], row: dict, writer) -> None:
        if not self.chief:
            return
        with atomic_path(self.history_path) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
        with writer.as_default(step=int(row["epoch"])):
            for name, value in row.items():
                if name != "epoch" and np.isfinite(value):
                    tf.summary.scalar(name, value)
        writer.flush()

    def load_best(self) -> None:
        """Put the best epoch's weights into the model (no-op before any epoch)."""
        if self.best_weights_path.exists():
            self.model.load_weights(str(self.best_weights_path))

    def cleanup_worker_files(self) -> None:
        """Remove a non-chief worker's throw-away checkpoint folder."""
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)


def _current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    rate = optimizer.learning_rate
    if callable(rate):
        rate = rate(optimizer.iterations)
    return float(np.asarray(rate))
