"""The supervised baseline: a student trained on masks with BCE/CE + Dice.

It is the upper bound the unsupervised pipeline is compared with, and the template of
every recipe: data from the data layer, a student from ``medistill.networks``, a step
function under ``tf.distribute``, and :class:`~medistill.train.loop.TrainingLoop` for
the rest.

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
from medistill.distribute import chief_by_tf_config
from medistill.export import ModelCard
from medistill.losses import hard_dice_per_example, predicted_labels, segmentation_loss
from medistill.networks import build_student, model_summary
from medistill.train.config import TrainConfig
from medistill.train.data_setup import count_classes, training_samples
from medistill.train.loop import LoopSettings, TrainingLoop, epoch_length
from medistill.train.run_folder import check_run_folder

log = logging.getLogger("medistill.train")


def preprocess_config(config: TrainConfig) -> PreprocessConfig:
    clip = tuple(config.clip_percentiles) if config.clip_percentiles else None
    return PreprocessConfig(size=config.img_size, channels=config.channels,
                            normalisation=config.normalisation, clip_percentiles=clip)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = config.lr
    if config.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            config.lr, decay_steps=max(1, config.epochs * steps_per_epoch), alpha=0.01)
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


def train_supervised(config: TrainConfig) -> Path:
    """Train, resume if the run folder holds a compatible run, export; return the folder."""
    from medistill.train.session import finish_run, open_run

    # Every input is checked before the run folder is touched: a failed start writes nothing.
    if chief_by_tf_config():  # the chief alone writes (and locks) the run folder
        check_run_folder(config.out, TrainConfig, config.overwrite)
    train, val = training_samples(config.data, mask_suffix=config.mask_suffix, mask_mode=config.mask_mode,
                                  val_fraction=config.val_fraction, seed=config.seed,
                                  skip_bad=config.skip_bad)
    num_classes = config.num_classes or count_classes(train + val, config.mask_mode)
    with open_run(config, TrainConfig, cpu_replicas=config.cpu_replicas) as session:
        pre = preprocess_config(config)
        batch = session.global_batch(config.batch, len(train))
        passes, steps = epoch_length(len(train), batch, config.min_steps_per_epoch)
        if config.steps_per_epoch:
            steps = min(steps, config.steps_per_epoch)
        augment = AugmentConfig() if config.augment else None

        # Epoch k's order and augmentation come from (seed, k) only, so a resumed run sees
        # the data an uninterrupted one would; decoded images are kept after first use.
        train_data = epoch_datasets(train, pre, num_classes=num_classes, batch_size=batch, shuffle=True,
                                    augment=augment, seed=config.seed, drop_remainder=True,
                                    mask_mode=config.mask_mode, passes=passes)

        val_data = (make_dataset(val, pre, num_classes=num_classes, batch_size=max(1, config.batch),
                                 shuffle=False, augment=None, seed=config.seed,
                                 mask_mode=config.mask_mode) if val else None)
        outputs = 1 if num_classes == 2 else num_classes
        keras.utils.set_random_seed(config.seed)  # same seed, same initial weights
        with session.scope():
            model = build_student(config.student, in_channels=config.channels, num_classes=outputs,
                                  **config.student_options)
            optimizer = make_optimizer(config, steps)
            optimizer.build(model.trainable_variables)
        session.synchronise_batchnorm(model)
        sizes = model_summary(model, (config.img_size, config.img_size, config.channels))
        log.info("student %s: %s parameters, %.2f GFLOPs per image at %d px", config.student,
                 f"{sizes['params']:,}", sizes["flops"] / 1e9, config.img_size)

        def step(batch_xy):
            x, y = batch_xy
            with tf.GradientTape() as tape:
                per_example = segmentation_loss(y, model(x, training=True))
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return {"loss": loss}

        settings = LoopSettings(epochs=config.epochs, patience=config.patience,
                                monitor="val_dice" if val else "loss", mode="max" if val else "min",
                                steps_per_epoch=steps)
        loop = TrainingLoop(session.strategy, session.run_dir, model, optimizer, step,
                            validation_fn(model, val_data, num_classes), settings)
        history = loop.fit(train_data)
        finish_run(session, loop, model, ModelCard(pre, num_classes), history,
                   {"train_images": len(train), "val_images": len(val), "steps_per_epoch": steps,
                    "passes_per_epoch": passes, **sizes})
        return session.run_dir
