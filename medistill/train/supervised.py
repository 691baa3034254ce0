"""The supervised baseline: a student trained on masks with BCE/CE + Dice.

A student built with ``deep_supervision=True`` is trained on every head ``aux1``… (the
sum over heads of BCE/CE + Dice, :func:`medistill.losses.kamsd.deep_supervision_loss_per_example`,
as EDSDF and nnU-Net do); otherwise only its logits are. Validation reads the logits.

It is the upper bound the unsupervised pipeline is compared with, and the smallest
:class:`~medistill.train.method.TrainingMethod`: data from the data layer, a student from
``medistill.networks``, a per-example loss under ``tf.distribute``; the skeleton
(:func:`~medistill.train.method.run_training`) does the rest.

Example::

    from medistill.train import TrainConfig, train_supervised
    train_supervised(TrainConfig(data="phantoms", out="runs/sup", epochs=5))
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from medistill.data import AugmentConfig, PreprocessConfig, epoch_datasets, make_dataset
from medistill.export import ModelCard
from medistill.losses import hard_dice_per_example, predicted_labels, segmentation_loss
from medistill.losses.kamsd import deep_supervision_loss_per_example
from medistill.networks import build_student, feature_model, head_names
from medistill.train.config import TrainConfig
from medistill.train.data_setup import config_samples, count_classes
from medistill.train.method import EpochPlan, TrainingMethod, run_training
from medistill.train.schedules import learning_rate
from medistill.train.session import RunSession

log = logging.getLogger("medistill.train")


def preprocess_config(config: TrainConfig) -> PreprocessConfig:
    clip = tuple(config.clip_percentiles) if config.clip_percentiles else None
    return PreprocessConfig(size=config.img_size, channels=config.channels,
                            normalisation=config.normalisation, clip_percentiles=clip)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate(config.lr, config.schedule, config.epochs * steps_per_epoch)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(rate)


def validation_fn(model: keras.Model, dataset: tf.data.Dataset | None, num_classes: int):
    """Mean loss and hard Dice (foreground classes) over the validation set."""
    if dataset is None:
        return None

    @tf.function
    def evaluate_batch(x, y):
        logits = model(x, training=False)
        dice = hard_dice_per_example(y, predicted_labels(logits), num_classes)
        return tf.reduce_sum(segmentation_loss(y, logits)), tf.reduce_sum(dice), tf.shape(x)[0]

    def validate() -> dict:
        loss = dice = count = 0.0
        for x, y in dataset:
            batch_loss, batch_dice, n = evaluate_batch(x, y)
            loss, dice, count = loss + float(batch_loss), dice + float(batch_dice), count + int(n)
        return {"val_loss": loss / max(count, 1), "val_dice": dice / max(count, 1)}

    return validate


class SupervisedTraining(TrainingMethod):
    """A student trained on images and their masks (BCE/CE + Dice), on :func:`run_training`'s skeleton."""

    config_cls = TrainConfig

    def check_inputs(self) -> None:
        # Every file is read here, before the run folder is touched: bad data writes nothing.
        config = self.config
        self.train, self.val = config_samples(config)
        self.num_classes = config.num_classes or count_classes(self.train + self.val, config.mask_mode)
        self.pre = preprocess_config(config)

    def prepare(self, session: RunSession) -> int:
        return len(self.train)

    def build(self, session: RunSession, plan: EpochPlan) -> None:
        config = self.config
        self.plan = plan
        # Epoch k's order and augmentation come from (seed, k) only, so a resumed run sees
        # the data an uninterrupted one would; decoded images are kept after first use.
        self.train_data = epoch_datasets(self.train, self.pre, num_classes=self.num_classes, batch_size=plan.batch,
                                         shuffle=True, augment=AugmentConfig() if config.augment else None,
                                         seed=config.seed, drop_remainder=True, mask_mode=config.mask_mode,
                                         passes=plan.passes)
        outputs = 1 if self.num_classes == 2 else self.num_classes
        self.student = build_student(config.student, in_channels=config.channels, num_classes=outputs,
                                     **config.student_options)
        self.heads = head_names(self.student)
        self.forward = feature_model(self.student, self.heads) if self.heads else None
        if self.heads:
            log.info("deep supervision: the loss sums over heads %s", ", ".join(self.heads))
        self.optimizer = make_optimizer(config, plan.steps)
        self.optimizer.build(self.student.trainable_variables)

    def epoch_data(self, epoch: int) -> tf.data.Dataset:
        return self.train_data(epoch)

    def step(self, batch_xy):
        x, y = batch_xy
        model = self.student
        with tf.GradientTape() as tape:
            per_example = self.loss_per_example(x, y)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.plan.batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(loss, model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss": loss}

    def loss_per_example(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """BCE/CE + Dice of the logits, or summed over every deep-supervision head: ``(B,)``."""
        if self.forward is None:
            return segmentation_loss(y, self.student(x, training=True))
        outputs = self.forward(x, training=True)
        channels = int(self.student.outputs[0].shape[-1])
        return deep_supervision_loss_per_example(y, [outputs[h] for h in self.heads], channels)

    def validation(self):
        if not self.val:
            return None
        config = self.config
        data = make_dataset(self.val, self.pre, num_classes=self.num_classes, batch_size=max(1, config.batch),
                            shuffle=False, augment=None, seed=config.seed, mask_mode=config.mask_mode)
        return validation_fn(self.student, data, self.num_classes)

    def card(self) -> ModelCard:
        return ModelCard(self.pre, self.num_classes)

    def summary(self) -> dict:
        return {"train_images": len(self.train), "val_images": len(self.val)}


def train_supervised(config: TrainConfig) -> Path:
    """Train, resume if the run folder holds a compatible run, export; return the folder."""
    return run_training(SupervisedTraining(config))
