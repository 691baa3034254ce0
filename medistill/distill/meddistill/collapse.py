"""Is the distilled student collapsed? A check on the selected checkpoint, no labels needed.

A student "collapses" when it predicts (almost) no foreground where its teacher finds
some: the failure mode of pixel-averaged losses on small targets. After training, the
selected student is run on the held-out images (the training images when there are
none) and compared with the teacher's masks:

- ``teacher_positive``: images where the teacher's mask (> 0.5) has at least
  :data:`MIN_PIXELS` pixels;
- ``student_found``: those of them where the student's mask covers at least
  :data:`MIN_COVER` of the teacher's area;
- collapsed when fewer than :data:`MIN_FOUND` of the teacher-positive images are found,
  or when the best label-free validation agreement stayed under :data:`MIN_AGREEMENT`.

The run records the numbers in ``summary.json`` (``collapse``) and the command exits
non-zero unless ``--keep-collapsed``.

Example::

    record = check_collapse(student, val_data, history)
    record["collapsed"], record["reason"]
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

MIN_PIXELS = 4
MIN_COVER = 0.1
MIN_FOUND = 0.5
MIN_AGREEMENT = 0.1


def _student_masks(student: keras.Model, images: np.ndarray, batch: int) -> np.ndarray:
    @tf.function(reduce_retracing=True)
    def forward(x):
        return tf.sigmoid(tf.cast(student(x, training=False), tf.float32))[..., 0]

    return np.concatenate([forward(images[i:i + batch]).numpy() for i in range(0, len(images), batch)]) > 0.5


def check_collapse(student: keras.Model, data: Any, history: list[dict], batch: int = 8,
                   monitor: str = "val_dice") -> dict[str, Any]:
    """The collapse record of ``student`` on ``data`` (a :class:`DistillData`) and the run's history."""
    teacher = data.soft > 0.5
    student_masks = _student_masks(student, data.images, batch)
    teacher_area = teacher.reshape(len(teacher), -1).sum(axis=1)
    overlap_area = (student_masks & teacher).reshape(len(teacher), -1).sum(axis=1)
    positive = teacher_area >= MIN_PIXELS
    found = positive & (overlap_area >= MIN_COVER * teacher_area)
    scores = [float(row[monitor]) for row in history if monitor in row and np.isfinite(row[monitor])]
    best = max(scores) if scores else None
    record: dict[str, Any] = {
        "images": int(len(teacher)), "teacher_positive": int(positive.sum()), "student_found": int(found.sum()),
        "student_foreground_fraction": round(float(student_masks.mean()), 5),
        "teacher_foreground_fraction": round(float(teacher.mean()), 5),
        f"best_{monitor}": None if best is None else round(best, 4), "collapsed": False, "reason": "",
    }
    if positive.sum() and found.sum() < MIN_FOUND * positive.sum():
        record.update(collapsed=True, reason=(
            f"the student finds the teacher's target on {int(found.sum())} of {int(positive.sum())} images "
            f"(needs at least {MIN_FOUND:.0%}): it predicts (almost) nothing where the teacher sees something"))
    elif best is not None and positive.sum() and best < MIN_AGREEMENT:
        record.update(collapsed=True, reason=(
            f"the label-free agreement with the teacher ({monitor}) never rose above {best:.3f} "
            f"(needs {MIN_AGREEMENT})"))
    return record
