"""The MedDistill distiller: the student, its loss terms, their weighting, one training step.

Specification: docs/methods.md §1 (released terms, weightings, co-learning).

:class:`MedDistiller` owns what trains beside the student (the feature projection, the
loss weighting, the co-learned decoder) and turns a batch into per-example loss terms
(docs/label_free_losses.md):

- ``bce``: soft-target BCE, optionally with per-pixel confidence weights ``|2S − 1|``;
- ``prob``: ``MSE(σ(z), S)``; ``dice``: ``1 − soft Dice(σ(z), S)`` per image;
- ``proj``: the box-projection (tightness) term; ``outside``: background outside every box,
  scaled by the detector's best score on the image (1 on images without a box);
- ``feat``: the projected student feature against the teacher's.

Each example's terms are multiplied by its trust ``weight`` (negatives rule, pseudo-label
quality control) before the weighting combines them.

Example::

    distiller = MedDistiller(student, build_weighting("learned", ["bce", "dice"]), terms=["bce", "dice"])
    out = distiller.losses(batch)      # out.total (B,), out.terms["dice"] (B,), …
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from medistill.distill.meddistill import data as md
from medistill.train.precision import scaled_gradients
from medistill.distill.projection import FeatureProjection
from medistill.distill.weighting import RELEASED_TERMS, LossWeighting
from medistill.losses.distillation import (
    agreement_dice_per_example,
    feature_cosine_per_example,
    feature_mse_per_example,
    prob_mse_per_example,
    soft_bce_per_example,
)
from medistill.losses.label_free import (
    box_projection_per_example,
    confidence_weights,
    outside_box_per_example,
    soft_dice_loss_per_example,
    weighted_soft_bce_per_example,
)
from medistill.networks import feature_model


def outside_trust(box_weights: tf.Tensor) -> tf.Tensor:
    """``(B, M)`` box scores → ``(B,)``: the best box score, or 1 on an image without a box."""
    weights = tf.cast(box_weights, tf.float32)
    has_box = tf.reduce_sum(weights, axis=1) > 0
    return tf.where(has_box, tf.reduce_max(weights, axis=1), tf.ones_like(weights[:, 0]))


@dataclass
class StepOutput:
    """What one forward pass of the distiller gives, per example ``(B,)``."""

    logits: tf.Tensor
    total: tf.Tensor
    terms: dict[str, tf.Tensor]
    weights: dict[str, tf.Tensor]


def flip_like_batch(maps: tf.Tensor, flips: tf.Tensor) -> tf.Tensor:
    """Flip each ``(S, S)`` map of ``(B, S, S)`` as its example was flipped (``flips (B, 2)``: lr, ud)."""
    flips = tf.cast(flips, tf.bool)
    maps = tf.where(flips[:, 0, None, None], tf.reverse(maps, [2]), maps)
    return tf.where(flips[:, 1, None, None], tf.reverse(maps, [1]), maps)


class MedDistiller:
    """The student and what trains with it: projection, loss weighting, co-learned decoder.

    ``feature_layer`` None means no feature term (a teacher without features).
    """

    def __init__(self, student: keras.Model, weighting: LossWeighting, *, feature_layer: str | None = None,
                 projection: FeatureProjection | None = None, feature_loss: str = "mse",
                 decoder: Any = None, colearn_confidence: float = 0.9, terms: Sequence[str] | None = None,
                 confidence: bool = False) -> None:
        if (feature_layer is None) != (projection is None):
            raise ValueError("feature_layer and projection go together (both or neither)")
        wanted = list(RELEASED_TERMS) if terms is None else [str(t) for t in terms]
        # The feature term exists only with a feature layer (a teacher with features).
        self._terms = [t for t in wanted if t != "feat" or feature_layer]
        if not self._terms:
            raise ValueError(f"no loss term left of {wanted} (feat needs a teacher with features)")
        self.confidence = confidence
        self.student = student
        self.weighting = weighting
        self.feature_layer = feature_layer
        self.projection = projection
        self.feature_fn = feature_cosine_per_example if feature_loss == "cosine" else feature_mse_per_example
        self.decoder = decoder
        self.colearn_confidence = colearn_confidence
        self.forward_model = feature_model(student, [feature_layer] if feature_layer else [])

    @property
    def term_names(self) -> list[str]:
        return list(self._terms)

    @property
    def trainable_variables(self) -> list:
        """Student, projection and (learned) weighting variables: what the main optimizer updates."""
        variables = list(self.student.trainable_variables)
        if self.projection is not None:
            variables += self.projection.trainable_variables
        return variables + list(self.weighting.trainable_variables)

    def losses(self, batch: dict, training: bool = True) -> StepOutput:
        """Per-example loss terms, their weights and the weighted total for one batch."""
        outputs = self.forward_model(batch["image"], training=training)
        logits = outputs["logits"]
        terms = {name: self._term(name, batch, outputs) for name in self._terms}
        if "weight" in batch:
            trust = tf.stop_gradient(tf.cast(tf.reshape(batch["weight"], (-1,)), tf.float32))
            terms = {name: trust * value for name, value in terms.items()}
        total, weights = self.weighting(terms, batch["uncertainty"])
        return StepOutput(logits, total, terms, weights)

    def _term(self, name: str, batch: dict, outputs: dict) -> tf.Tensor:
        """One per-example term ``(B,)``. Plain branches, no lambdas: autograph misreads lambdas
        that share source lines inside a ``tf.function``."""
        logits, soft = outputs["logits"], batch["soft"]
        if name == "bce":
            if self.confidence:
                return weighted_soft_bce_per_example(soft, logits, confidence_weights(soft))
            return soft_bce_per_example(soft, logits)
        if name == "prob":
            return prob_mse_per_example(soft, logits)
        if name == "dice":
            return soft_dice_loss_per_example(soft, logits)
        if name == "proj":
            return box_projection_per_example(logits, batch["rows"], batch["cols"], batch["box_weights"])
        if name == "outside":
            return outside_box_per_example(logits, batch["inside"], outside_trust(batch["box_weights"]))
        if name == "feat":
            return self.feature_fn(self.projection(outputs[self.feature_layer]), batch["features"])
        raise ValueError(f"unknown loss term {name!r}")

    def colearn_per_example(self, batch: dict, logits: tf.Tensor) -> tf.Tensor:
        """The decoder's co-learning loss ``(B,)`` (its output flipped like the student's input)."""
        size = int(batch["soft"].shape[1])
        _, decoder_logits = self.decoder.soft_masks(batch["embeddings"], batch["boxes"], batch["valid"],
                                                    out_size=size, training=True)
        student_prob = tf.sigmoid(tf.cast(logits, tf.float32))[..., 0]
        return self.colearn_loss(flip_like_batch(decoder_logits, batch["flip"]), student_prob, batch["soft"])

    def colearn_loss(self, decoder_logits, student_prob, targets):
        from medistill.distill.colearn import colearn_loss_per_example

        return colearn_loss_per_example(decoder_logits, student_prob, targets, self.colearn_confidence)


def make_step(distiller: MedDistiller, optimizer: keras.optimizers.Optimizer, global_batch: int,
              decoder_optimizer: keras.optimizers.Optimizer | None = None):
    """The per-replica step: returns every term, every weight and the total, over the global batch."""
    def average(per_example: tf.Tensor) -> tf.Tensor:
        return tf.nn.compute_average_loss(tf.cast(per_example, tf.float32), global_batch_size=global_batch)

    def step(batch: dict) -> dict:
        with tf.GradientTape() as tape:
            out = distiller.losses(batch, training=True)
            loss = average(out.total)
        variables = distiller.trainable_variables
        grads = scaled_gradients(tape, loss, variables, optimizer)
        optimizer.apply_gradients(zip(grads, variables))
        report = {"loss": loss}
        report.update({name: average(value) for name, value in out.terms.items()})
        report.update({name if name == "penalty" else f"w_{name}": average(value)
                       for name, value in out.weights.items()})
        if decoder_optimizer is not None:
            decoder_variables = distiller.decoder.trainable_variables
            with tf.GradientTape() as decoder_tape:
                colearn = average(distiller.colearn_per_example(batch, tf.stop_gradient(out.logits)))
            decoder_grads = decoder_tape.gradient(colearn, decoder_variables)
            decoder_optimizer.apply_gradients(zip(decoder_grads, decoder_variables))
            report["colearn"] = colearn
        return report

    return step


def make_validation(student: keras.Model, val: md.DistillData | None, batch: int):
    """Agreement Dice (``val_dice``) and soft BCE (``val_bce``) against the teacher on held-out images.

    ``val_dice`` averages over the images where the student or the teacher finds something:
    an image that both leave empty says nothing about segmentation, and counting it as 1
    made a student that predicts nothing look half right (it then won checkpoint
    selection on sets with many negatives). A student that marks a negative image is
    still penalised (Dice 0 there). With no such image at all, ``val_dice`` is 1.
    """
    if val is None:
        return None

    @tf.function(reduce_retracing=True)
    def scores(x, soft):
        logits = student(x, training=False)
        prob = tf.sigmoid(tf.cast(logits, tf.float32))[..., 0]
        target = tf.cast(soft, tf.float32)
        if target.shape.rank == 4:
            target = target[..., 0]
        found = tf.logical_or(tf.reduce_any(prob > 0.5, axis=[1, 2]), tf.reduce_any(target > 0.5, axis=[1, 2]))
        found = tf.cast(found, tf.float32)
        dice = agreement_dice_per_example(prob, target)
        return (tf.reduce_sum(dice * found), tf.reduce_sum(found),
                tf.reduce_sum(soft_bce_per_example(soft, logits)))

    def validate() -> dict:
        dice = informative = bce = 0.0
        for x, soft in md.validation_batches(val, batch):
            batch_dice, batch_found, batch_bce = scores(x, soft)
            dice, informative, bce = dice + float(batch_dice), informative + float(batch_found), bce + float(batch_bce)
        return {"val_dice": dice / informative if informative else 1.0, "val_bce": bce / len(val)}

    return validate
