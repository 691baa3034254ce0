"""SSCD's data (docs/methods.md §4): the labelled/unlabelled split, the weak and strong views,
endless seeded streams, and the labelled fraction of a stage-0 teacher run.

Split out of :mod:`medistill.distill.recipes.sscd` (which re-exports these names) to keep
each file short.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from medistill.data import AugmentConfig, Sample, make_dataset
from medistill.data.samples import load_sample_image
from medistill.distill.recipes.base import RecipeContext
from medistill.errors import MedistillError
from medistill.losses.sscd import paste, random_box_mask
from medistill.train.data_setup import split_by_source


# -- data ----------------------------------------------------------------------
def labelled_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """``(labelled, unlabelled)``: about ``fraction`` of ``samples`` keep their masks.

    Split by source file (slices of one volume stay together), seeded; at least one image
    is labelled. ``fraction = 1`` labels everything.
    """
    if not 0.0 < fraction <= 1.0:
        raise MedistillError(f"--labelled-fraction must be in (0, 1], got {fraction}")
    return split_by_source(list(samples), 1.0 - fraction, seed)


def image_only_loader(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The sample's image and an all-zero placeholder mask: the real mask is never read."""
    image = load_sample_image(sample)
    return image, np.zeros(image.shape[:2], np.int32)


def weak_augment(augment: AugmentConfig | None) -> AugmentConfig | None:
    """The geometric part of ``augment`` (intensity changes off): SSCD's weak view."""
    if augment is None:
        return None
    return dataclasses.replace(augment, brightness=0.0, contrast=0.0, gamma=0.0)


def strong_view(images: tf.Tensor, seed: tf.Tensor, jitter: float = 0.2, noise: float = 0.05,
                cutout: float = 0.25) -> tf.Tensor:
    """The strong view of a weak-view batch ``(B, H, W, C)``: per-image intensity changes only.

    Scaled by each image's intensity spread ``s = max − min`` (so z-scored inputs work):
    contrast factor from ``1 ± jitter`` about the image mean, brightness shift from
    ``± jitter·s``, Gaussian noise of standard deviation ``noise·s``, and a random square of
    side ``cutout·H`` set to the image mean (``cutout = 0``: none). Geometry is unchanged.
    """
    images = tf.cast(images, tf.float32)
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), num=4)
    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    spread = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True) - low
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    factor = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[0], 1.0 - jitter, 1.0 + jitter)
    shift = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[1], -jitter, jitter) * spread
    out = (images - mean) * factor + mean + shift
    out += tf.random.stateless_normal(tf.shape(images), seeds[2]) * noise * spread
    if cutout > 0:
        square = random_box_mask(batch, height, width, seeds[3], cutout)
        out = paste(out, tf.broadcast_to(mean, tf.shape(out)), square)
    return out


def repeated_batches(samples: list[Sample], context: RecipeContext, seed: int, *,
                     augment: AugmentConfig | None, load_fn=None) -> tf.data.Dataset:
    """Endless ``(x, y)`` batches of ``context.global_batch`` from ``samples``, reshuffled every pass.

    Repeating before batching lets a part smaller than one batch still fill every step.
    """
    dataset = make_dataset(samples, context.preprocess, num_classes=context.num_classes, batch_size=1,
                           shuffle=True, augment=augment, seed=seed, load_fn=load_fn,
                           mask_mode=context.config.mask_mode)
    return dataset.unbatch().repeat().batch(context.global_batch, drop_remainder=True)


class EndlessStream:
    """Mixed into recipes whose data is one endless seeded stream, built once: every epoch
    iterates it again, and each new iteration draws a new order and new views (tf.data's
    reshuffling), the same sequence in every run with the same seed."""

    def train_dataset(self, epoch: int = 0) -> tf.data.Dataset:
        if getattr(self, "_stream", None) is None:
            self._stream = self.stream()
        return self._stream


def step_seeds(seed: int) -> tf.data.Dataset:
    # One (2,) stateless seed per batch, new every epoch, the same for the same seed.
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def labelled_fraction_of(config: Any) -> float:
    """The labelled fraction of a run: its own setting, or, for a teacher trained into
    ``RUN/teacher`` by ``--train-teacher``, the setting of ``RUN/config.json``."""
    fraction = getattr(config, "labelled_fraction", None)
    if fraction is not None:
        return float(fraction)
    from medistill.distill.config import DistillConfig
    from medistill.distill.teacher import TEACHER_FOLDER
    from medistill.train.run_folder import CONFIG_NAME

    parent = Path(config.out).parent / CONFIG_NAME
    if Path(config.out).name != TEACHER_FOLDER or not parent.is_file():
        raise MedistillError(
            f"the SSCD teacher in {config.out} must learn from the labelled images only, but its "
            f"--labelled-fraction is unknown (no {parent}); train it with `medistill distill --recipe "
            "sscd --train-teacher NAME --labelled-fraction F`")
    return DistillConfig.load(parent).labelled_fraction
