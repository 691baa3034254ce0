"""The supervised trainer trains every deep-supervision head of a student that has them.

Without the deep-supervision loss only the main logits get a gradient: the coarse head
``aux1`` keeps its initial weights and stays at chance. These tests build the trainer on
real phantoms (through ``SupervisedTraining.build``, as ``medistill train`` does) and
take real optimizer steps.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from medistill.data.phantoms import generate_phantoms
from medistill.losses import hard_dice_per_example, predicted_labels
from medistill.networks import feature_model
from medistill.train.config import TrainConfig
from medistill.train.method import EpochPlan
from medistill.train.supervised import SupervisedTraining

SIZE = 32


def _trainer(tmp_path, deep_supervision: bool) -> SupervisedTraining:
    generate_phantoms(tmp_path / "data", 8, size=SIZE, seed=0)
    config = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), img_size=SIZE, batch=4,
                         lr=3e-3, val_fraction=0.0, augment=False, seed=0, epochs=1,
                         student_options={"base_filters": 4, "depth": 3, "deep_supervision": deep_supervision})
    trainer = SupervisedTraining(config)
    trainer.check_inputs()
    tf.keras.utils.set_random_seed(0)
    trainer.build(None, EpochPlan(batch=4, passes=1, steps=1))
    return trainer


def _head_dice(trainer: SupervisedTraining, x, y, head: str) -> float:
    logits = feature_model(trainer.student, [head])(x, training=False)[head]
    return float(tf.reduce_mean(hard_dice_per_example(y, predicted_labels(logits), trainer.num_classes)))


def test_every_head_of_a_deep_supervision_student_learns(tmp_path):
    trainer = _trainer(tmp_path, deep_supervision=True)
    assert trainer.heads == ["aux1", "aux2", "aux3"]
    x, y = next(iter(trainer.epoch_data(0)))
    coarse = trainer.student.get_layer("aux1")
    before = [np.array(v) for v in coarse.weights]
    dice_before = _head_dice(trainer, x, y, "aux1")
    step = tf.function(trainer.step)
    losses = [float(step((x, y))["loss"]) for _ in range(40)]
    after = [np.array(v) for v in coarse.weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), "aux1 was not trained"
    assert losses[-1] < losses[0]
    assert _head_dice(trainer, x, y, "aux1") > dice_before + 0.05


def test_a_student_without_heads_keeps_the_plain_loss(tmp_path):
    trainer = _trainer(tmp_path, deep_supervision=False)
    assert trainer.heads == [] and trainer.forward is None
    x, y = next(iter(trainer.epoch_data(0)))
    from medistill.losses import segmentation_loss

    np.testing.assert_allclose(trainer.loss_per_example(x, y), segmentation_loss(y, trainer.student(x, training=True)),
                               rtol=1e-5)
