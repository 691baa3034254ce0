"""One training run of any recipe: its strategy, run folder, logs and final export.

Every trainer (supervised, MedDistill, the supervised and semi-supervised recipes) runs
the same way: open the run (choose the ``tf.distribute`` strategy, create or reopen the
run folder with its ``config.json``, start a readable log), build its models inside
``session.scope()``, train with :class:`~medistill.train.loop.TrainingLoop`, then
:func:`finish_run` (best weights, ``.keras`` + SavedModel, curves, summary). Only the
chief worker writes the run folder.

Example::

    with open_run(config, TrainConfig, cpu_replicas=config.cpu_replicas) as session:
        batch = session.global_batch(config.batch, len(train))
        with session.scope():
            model = build_student(...)
        loop = TrainingLoop(session.strategy, session.run_dir, model, optimizer, step, validate, settings)
        history = loop.fit(lambda epoch: data)
        finish_run(session, loop, model, ModelCard(pre, num_classes), history, {"train_images": len(train)})
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from medistill.train.precision import float32_copy, is_mixed
from medistill.distribute import choose_strategy, is_chief
from medistill.export import ModelCard, save_model_artifacts
from medistill.fileio import atomic_path, write_json_atomic
from medistill.train.curves import plot_history
from medistill.train.loop import TrainingLoop
from medistill.train.run_folder import add_file_log, prepare_run_folder

log = logging.getLogger("medistill.train")

# Tests set this to compare the final weights of every worker of a multi-worker run.
WORKER_WEIGHTS_ENV = "MEDISTILL_WORKER_WEIGHTS_DIR"


@dataclass
class RunSession:
    """What a trainer needs to know about its run."""

    strategy: tf.distribute.Strategy
    run_dir: Path
    chief: bool
    resumed: bool
    synchronised: list = field(default_factory=list)  # batch-norm layers made global (finish_run undoes)

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def scope(self):
        return self.strategy.scope()

    def global_batch(self, requested: int, available: int) -> int:
        """The largest multiple of the replica count not above ``requested`` or ``available``."""
        replicas = self.replicas
        batch = max(replicas, min(requested, available) // replicas * replicas)
        if batch != requested:
            log.info("global batch %d (asked %d; %d training images, %d replica(s))",
                     batch, requested, available, replicas)
        return batch

    def synchronise_batchnorm(self, *models: keras.Model) -> int:
        """Batch-norm statistics over the global batch on several replicas (a no-op on one).

        Per-replica statistics would make a 2-replica run differ from 1 device on the same
        global batch; :func:`finish_run` turns it off again before exporting. Returns the
        number of layers switched.
        """
        if self.replicas < 2:
            return 0
        layers = batchnorm_layers(*models)
        for layer in layers:
            layer.synchronized = True
        self.synchronised.extend(layers)
        return len(layers)

    @property
    def task_index(self) -> int:
        resolver = getattr(self.strategy, "cluster_resolver", None)
        return int(resolver.task_id or 0) if resolver is not None and resolver.task_type else 0


def batchnorm_layers(*models: keras.Model) -> list:
    """Every ``BatchNormalization`` layer inside ``models``, nested layers included."""
    return [layer for model in models
            for layer in model._flatten_layers()  # every nested layer (Keras has no public walk)
            if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def open_run(config: Any, config_cls: type, *, cpu_replicas: int = 1,
             log_name: str = "train.log") -> Iterator[RunSession]:
    """Choose the strategy and prepare ``config.out``; see the module docstring."""
    strategy = choose_strategy(cpu_replicas)
    chief = is_chief(strategy)
    run_dir = Path(config.out)
    resumed = prepare_run_folder(config, config_cls) if chief else False
    handler = add_file_log(run_dir, log_name) if chief else None
    try:
        if resumed:
            log.info("found an earlier run in %s: resuming it", run_dir)
        yield RunSession(strategy, run_dir, chief, resumed)
    finally:
        if handler is not None:
            logging.getLogger("medistill").removeHandler(handler)
            handler.close()


def finish_run(session: RunSession, loop: TrainingLoop, model: keras.Model, card: ModelCard,
               history: list[dict], summary: dict, *, keras_name: str = "model.keras") -> None:
    """Load the best weights, export the model and write curves and ``summary.json``."""
    for layer in session.synchronised:  # the export carries no distribution setting
        layer.synchronized = False
    loop.load_best()
    _write_worker_weights(session, model)
    if not session.chief:
        loop.cleanup_worker_files()
        return
    run_dir = session.run_dir
    exported = float32_copy(model) if is_mixed(model) else model
    save_model_artifacts(exported, run_dir, card, keras_name=keras_name)
    plot_history(history, run_dir / "curves.png")
    monitor = loop.settings.monitor
    scores = [row[monitor] for row in history if monitor in row]
    best = float(loop.best.numpy()) if scores else None  # JSON has no -Infinity
    write_json_atomic(run_dir / "summary.json", {
        "epochs_run": len(history), f"best_{monitor}": best, "replicas": session.replicas,
        "num_classes": card.num_classes, **summary,
    })
    log.info("wrote %s (%s, saved_model/, preprocessing.json, history.csv, curves.png, summary.json)",
             run_dir, keras_name)


def _write_worker_weights(session: RunSession, model: keras.Model) -> None:
    directory = os.environ.get(WORKER_WEIGHTS_ENV)
    if not directory:
        return
    path = Path(directory) / f"worker-{session.task_index}.weights.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        model.save_weights(str(tmp))
