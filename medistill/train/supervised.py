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

from medistill.data import AugmentConfig, PreprocessConfig, make_dataset
from medistill.distribute import choose_strategy, is_chief
from medistill.export import ModelCard, save_model_artifacts
from medistill.fileio import write_json_atomic
from medistill.losses import hard_dice_per_example, predicted_labels, segmentation_loss
from medistill.networks import build_student, model_summary
from medistill.train.config import TrainConfig
from medistill.train.curves import plot_history
from medistill.train.data_setup import count_classes, training_samples
from medistill.train.loop import LoopSettings, TrainingLoop
from medistill.train.run_folder import add_file_log, prepare_run_folder

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
    strategy = choose_strategy(config.cpu_replicas)
    run_dir = Path(config.out)
    chief = is_chief(strategy)
    resumed = prepare_run_folder(config, TrainConfig) if chief else False
    handler = add_file_log(run_dir) if chief else None
    try:
        if resumed:
            log.info("found an earlier run in %s: resuming it", run_dir)
        train, val = training_samples(config.data, mask_suffix=config.mask_suffix, mask_mode=config.mask_mode,
                                      val_fraction=config.val_fraction, seed=config.seed,
                                      skip_bad=config.skip_bad)
        num_classes = config.num_classes or count_classes(train + val, config.mask_mode)
        pre = preprocess_config(config)
        replicas = strategy.num_replicas_in_sync
        batch = max(replicas, min(config.batch, len(train)) // replicas * replicas)
        if batch != config.batch:
            log.info("global batch %d (asked %d; %d training images, %d replica(s))",
                     batch, config.batch, len(train), replicas)
        steps = max(1, len(train) // batch)
        if config.steps_per_epoch:
            steps = min(steps, config.steps_per_epoch)
        augment = AugmentConfig() if config.augment else None

        # Built once: each pass reshuffles and re-augments from the cached, decoded images.
        train_data = make_dataset(train, pre, num_classes=num_classes, batch_size=batch, shuffle=True,
                                  augment=augment, seed=config.seed, drop_remainder=True,
                                  mask_mode=config.mask_mode)

        val_data = (make_dataset(val, pre, num_classes=num_classes, batch_size=max(1, config.batch),
                                 shuffle=False, augment=None, seed=config.seed,
                                 mask_mode=config.mask_mode) if val else None)
        outputs = 1 if num_classes == 2 else num_classes
        keras.utils.set_random_seed(config.seed)  # same seed, same initial weights
        with strategy.scope():
            model = build_student(config.student, in_channels=config.channels, num_classes=outputs,
                                  **config.student_options)
            optimizer = make_optimizer(config, steps)
            optimizer.build(model.trainable_variables)
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
        loop = TrainingLoop(strategy, run_dir, model, optimizer, step,
                            validation_fn(model, val_data, num_classes), settings)
        history = loop.fit(lambda epoch: train_data)
        loop.load_best()
        if chief:
            card = ModelCard(pre, num_classes)
            save_model_artifacts(model, run_dir, card)
            plot_history(history, run_dir / "curves.png")
            scores = [r["val_dice"] for r in history if "val_dice" in r]
            best = max(scores) if scores else None  # JSON has no -Infinity
            write_json_atomic(run_dir / "summary.json", {
                "epochs_run": len(history), "best_val_dice": best,
                "num_classes": num_classes, "train_images": len(train), "val_images": len(val),
                "replicas": replicas, **sizes,
            })
            log.info("wrote %s (model.keras, saved_model/, preprocessing.json, history.csv, curves.png)", run_dir)
        else:
            loop.cleanup_worker_files()
        return run_dir
    finally:
        if handler is not None:
            logging.getLogger("medistill").removeHandler(handler)
            handler.close()
