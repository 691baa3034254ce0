"""The learning rate along a run, one rule for every trainer (supervised, MedDistill, recipes).

``constant`` keeps the peak rate; ``cosine`` decays it along a cosine to
:data:`FINAL_FRACTION` of it at the run's last optimizer step.

>>> learning_rate(1e-3, "constant", total_steps=100)
0.001
>>> round(float(learning_rate(1e-3, "cosine", total_steps=100)(100)), 8)
1e-05
"""

from __future__ import annotations

import keras

FINAL_FRACTION = 0.01  # the cosine ends at 1 % of the peak rate, not at 0


def learning_rate(lr: float, schedule: str, total_steps: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """``lr`` as it is (``"constant"``) or along a cosine over ``total_steps`` steps (``"cosine"``)."""
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps), alpha=FINAL_FRACTION)
    return lr
