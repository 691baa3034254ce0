"""The frozen teacher of a distillation run: loaded from a run folder, or trained first.

* :func:`load_teacher` reads a Keras model (``model.keras`` or ``student.keras`` of a run
  folder, or a ``.keras`` file) and freezes it: ``trainable=False``, so none of its variables is in
  any optimiser's list and its batch-norm statistics never move. A SavedModel is not
  enough: recipes read the teacher's named intermediate layers.
* :func:`train_teacher_in_child` runs
  :func:`medistill.distill.teacher_child.train_teacher` in a child process, which
  trains the teacher into ``RUN/teacher/`` with the supervised
  trainer (:func:`medistill.train.supervised.train_supervised`), or with the recipe's own
  teacher recipe (``Recipe.teacher_recipe``: deep supervision over every head for KAMSD
  and CAKD+MSKD, class-wise averaged images for SIKD). A finished teacher
  (``summary.json`` present) is reused; an interrupted one resumes.

Example::

    path = train_teacher_in_child(config)        # RUN/teacher, or reused
    with strategy.scope():
        teacher = load_teacher(path)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import keras

from medistill.distribute import file_barrier, forget_arrival
from medistill.train.session import WORKER_WEIGHTS_ENV
from medistill.errors import CheckpointError, MedistillError
from medistill.export import KERAS_NAMES

log = logging.getLogger("medistill.distill")

TEACHER_FOLDER = "teacher"
CHILDREN_EXITED = "teacher-children-exited"  # the file barrier after the teacher's child processes


def teacher_file(path: str | Path) -> Path:
    """The ``.keras`` file of a teacher given as a run folder or a ``.keras`` file."""
    path = Path(path)
    if path.is_dir():
        for name in KERAS_NAMES:
            if (path / name).is_file():
                return path / name
        hint = " (a SavedModel folder cannot serve: recipes read named layers)" if (
            path / "saved_model.pb").exists() else ""
        raise CheckpointError(f"--teacher-model {path}: no {' or '.join(KERAS_NAMES)} in this folder{hint}; pass a "
                              "run folder of `medistill train`/`distill` or a .keras file")
    if path.suffix != ".keras" or not path.is_file():
        raise CheckpointError(f"--teacher-model {path}: not a .keras file or a run folder holding "
                              "model.keras (check the path)")
    return path


def load_teacher(path: str | Path) -> keras.Model:
    """The teacher at ``path`` (run folder or ``.keras``), frozen. Call inside the scope."""
    import medistill.networks  # noqa: F401  (registers the students' layers)
    from medistill.losses.kamsd import FeatureAdapter  # noqa: F401

    file = teacher_file(path)
    try:
        model = keras.saving.load_model(file, compile=False)
    except Exception as error:  # Keras raises many types for a bad file
        raise CheckpointError(f"--teacher-model {file} cannot be loaded: {error}") from error
    model.trainable = False
    log.info("teacher %s from %s: %s parameters", model.name, file, f"{model.count_params():,}")
    return model


def check_teacher(teacher: keras.Model, channels: int, outputs: int) -> None:
    """Raise :class:`CheckpointError` when the teacher's input or output channels do not fit."""
    in_channels = teacher.inputs[0].shape[-1]
    out_channels = teacher.outputs[0].shape[-1]
    if in_channels is not None and in_channels != channels:
        raise CheckpointError(f"the teacher takes {in_channels}-channel images but this run uses "
                              f"--channels {channels}; use a teacher trained with the same --channels")
    if out_channels != outputs:
        kinds = {1: "one sigmoid logit (binary)"}
        raise CheckpointError(
            f"the teacher predicts {kinds.get(out_channels, f'{out_channels} classes')} but the data "
            f"need {kinds.get(outputs, f'{outputs} classes')}; use a teacher trained on the same labels "
            "(or set --num-classes)")


def teacher_folder(config) -> Path:
    """Where a run trains its teacher: ``RUN/teacher``."""
    return Path(config.out) / TEACHER_FOLDER


def finished(folder: Path) -> bool:
    """Whether ``folder`` holds a completed teacher run (its summary is written last)."""
    return (folder / "summary.json").is_file() and (folder / "model.keras").is_file()


def train_teacher_in_child(config) -> Path:
    """``train_teacher`` in a child process (``python -m medistill.distill.teacher_child``).

    The child owns the teacher run's ``tf.distribute`` strategy, so the parent creates
    its own strategy afterwards as the first of its process: TensorFlow does not support
    a second ``MultiWorkerMirroredStrategy`` in one process (workers can hang in their
    first all-reduce). Under ``TF_CONFIG`` every worker's child joins the same cluster
    on the same ports, which the parents have not opened yet; a file barrier in ``RUN``
    then holds every parent until every child has exited (a non-chief child ends while
    the chief's still exports, and a parent that opened its port then would talk to
    that child and hang). The child's log goes to this process's standard error.
    """
    folder = teacher_folder(config)
    if finished(folder):
        log.info("teacher: reusing the finished teacher in %s", folder)
        return folder
    forget_arrival(Path(config.out), CHILDREN_EXITED)
    env = {key: value for key, value in os.environ.items() if key != WORKER_WEIGHTS_ENV}
    command = [sys.executable, "-m", "medistill.distill.teacher_child", json.dumps(config.to_dict())]
    if logging.getLogger("medistill").isEnabledFor(logging.DEBUG):
        command.append("--verbose")
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        raise MedistillError(f"training the teacher in {folder} failed (exit status {done.returncode}; its "
                             f"messages are above and in {folder / 'train.log'}). Fix the cause and run the "
                             "same command again: the teacher resumes from its last epoch.")
    file_barrier(Path(config.out), CHILDREN_EXITED)
    return folder
