"""The pieces of SSCD (semi-supervised curriculum decoupling, docs/methods.md §4) as plain functions.

* curriculum (here): :func:`curriculum_weights`, :func:`stage_for_epoch`, :func:`fold_weights`,
  :func:`curriculum_logits` — which decoder outputs (coarse to fine) make the prediction;
* pseudo labels (:mod:`medistill.losses.sscd_pseudo`): :func:`pseudo_variance`,
  :func:`pv_gated_pseudo_labels`, :func:`largest_component_per_class` (numpy) and
  :func:`largest_component_tf`;
* hard regions and mixing (:mod:`medistill.losses.sscd_mixing`): :func:`entropy_map`,
  :func:`entropy_hard_mask`, :func:`random_box_mask`, :func:`paste`, :func:`copy_paste_mix`,
  :func:`patch_difficulty`, :func:`hard_patch_exchange`;
* losses (here), per example ``(B,)``, float32: :func:`region_ce_dice_per_example`,
  :func:`cross_pseudo_dice_per_example`, :func:`sscd_model_loss_per_example`.

Every name is importable from this module (``__all__``).

Probabilities are ``(..., K)`` softmax maps; a one-channel map holds ``p = P(foreground)``
and counts as the two classes ``[1 − p, p]`` (logits: ``[0, z]``, as in
:func:`medistill.losses.cakd.class_logits`). Random choices come from stateless ops keyed by
a ``(2,)`` integer seed tensor, so the same seed gives the same result.

Example:
    >>> import numpy as np
    >>> curriculum_weights(2)
    (0.5, 0.5, 0.0, 0.0)
    >>> [stage_for_epoch(epoch, 10) for epoch in range(10)]
    [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    >>> probs = np.array([[[[0.7, 0.2, 0.1]]]], "float32")
    >>> round(float(pseudo_variance(probs)[0, 0, 0]), 4)
    0.31
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from medistill.losses.cakd import class_logits
from medistill.losses.segmentation import soft_dice_per_example
from medistill.losses.sscd_mixing import (
    copy_paste_mix,
    entropy_hard_mask,
    entropy_map,
    hard_patch_exchange,
    paste,
    patch_difficulty,
    random_box_mask,
)
from medistill.losses.sscd_pseudo import (
    as_class_probabilities,
    largest_component_per_class,
    largest_component_tf,
    pseudo_variance,
    pv_gated_pseudo_labels,
)

CURRICULUM = (
    (1.0, 0.0, 0.0, 0.0),
    (0.5, 0.5, 0.0, 0.0),
    (0.0, 0.5, 0.5, 0.0),
    (0.0, 0.0, 0.5, 0.5),
    (0.0, 0.0, 0.0, 1.0),
)
STAGES = len(CURRICULUM)
EPSILON = 1e-6


# -- curriculum ----------------------------------------------------------------
def curriculum_weights(stage: int) -> tuple[float, float, float, float]:
    """Weights of the four decoder outputs (1/8, 1/4, 1/2, full; coarse to fine) in ``stage`` 1..5."""
    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) or not 1 <= stage <= STAGES:
        raise ValueError(f"curriculum stage must be an integer 1..{STAGES}, got {stage!r}")
    return CURRICULUM[int(stage) - 1]


def stage_for_epoch(epoch: int, epochs: int, stages: int = STAGES) -> int:
    """The curriculum stage (1..``stages``) of 0-based ``epoch`` in a run of ``epochs``.

    The epochs are split evenly into ``stages`` consecutive blocks whose lengths differ by
    at most one: ``1 + epoch·stages // epochs``. With fewer epochs than
    stages the run takes the *last* ``epochs`` stages, one each, so that it always ends on
    the final stage (the full-resolution output that is exported).
    """
    if epochs < 1 or stages < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"need 0 <= epoch < epochs and stages >= 1, got epoch={epoch}, "
                         f"epochs={epochs}, stages={stages}")
    if epochs < stages:
        return stages - epochs + 1 + epoch
    return 1 + epoch * stages // epochs


def fold_weights(weights: Sequence[float], heads: int) -> list[float]:
    """Map the four curriculum weights onto a student's ``heads`` outputs (coarse to fine).

    Slot ``i`` of ``weights`` goes to head ``round(i·(heads−1)/(len(weights)−1))``, so the
    coarsest and the finest slots always land on the coarsest and the finest head; the
    weights of slots that share a head add up. With four heads this is the identity.
    """
    if heads < 1:
        raise ValueError(f"a student needs at least one output head, got {heads}")
    folded = [0.0] * heads
    last = max(len(weights) - 1, 1)
    for slot, weight in enumerate(weights):
        folded[int(round(slot * (heads - 1) / last))] += float(weight)
    return folded


def curriculum_logits(head_logits: Sequence[tf.Tensor], weights: tf.Tensor | Sequence[float]) -> tf.Tensor:
    """``Σ_i w_i · z_i``: the prediction of a deep-supervised student at this curriculum stage.

    ``head_logits`` are the full-resolution logit maps of the heads, coarse to fine (one
    weight per head, e.g. from :func:`fold_weights`). Every head is used, with weight 0 for
    the inactive ones, so the traced graph is the same in every stage.
    """
    weights = tf.cast(tf.convert_to_tensor(weights), tf.float32)
    stacked = tf.stack([tf.cast(z, tf.float32) for z in head_logits], axis=0)
    return tf.tensordot(weights, stacked, axes=1)



# -- losses --------------------------------------------------------------------
def region_ce_dice_per_example(labels: tf.Tensor, logits: tf.Tensor, region: tf.Tensor | None = None) -> tf.Tensor:
    """Cross-entropy + (1 − mean foreground soft Dice) restricted to ``region``: ``(B,)``.

    ``labels`` ``(B, H, W)`` ints; ``logits`` ``(B, H, W, K)`` (one channel = sigmoid);
    ``region`` ``(B, H, W)`` in {0, 1} (None = every pixel). The CE is averaged over the
    region's pixels; the Dice compares ``softmax·region`` with ``onehot·region``. An empty
    region gives 0. With ``region=None`` this equals
    :func:`medistill.losses.segmentation.segmentation_loss`.
    """
    z = class_logits(logits)
    labels = tf.cast(labels, tf.int32)
    region = tf.ones(tf.shape(labels), tf.float32) if region is None else tf.cast(region, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z)
    area = tf.reduce_sum(region, axis=[1, 2])
    ce = tf.math.divide_no_nan(tf.reduce_sum(ce * region, axis=[1, 2]), area)
    weight = region[..., None]
    dice = soft_dice_per_example(tf.nn.softmax(z) * weight, tf.one_hot(labels, z.shape[-1]) * weight)
    return ce + 1.0 - tf.reduce_mean(dice[:, 1:], axis=-1)


def cross_pseudo_dice_per_example(logits: tf.Tensor, peer_logits: tf.Tensor) -> tf.Tensor:
    """``Dice(p_k, argmax p_k')`` as a loss, ``(B,)``: 1 − mean foreground soft Dice of
    ``softmax(logits)`` against the one-hot arg-max of ``peer_logits`` (no gradient to the peer)."""
    z = class_logits(logits)
    peer = tf.argmax(tf.stop_gradient(class_logits(peer_logits)), axis=-1)
    dice = soft_dice_per_example(tf.nn.softmax(z), tf.one_hot(peer, z.shape[-1]))
    return 1.0 - tf.reduce_mean(dice[:, 1:], axis=-1)


def fold_groups(values: tf.Tensor, batch: int | tf.Tensor) -> tf.Tensor:
    """Mean over consecutive groups: ``(r·batch,) -> (batch,)``; entry ``i`` of every group
    belongs to example ``i``."""
    return tf.reduce_mean(tf.reshape(values, [-1, batch]), axis=0)


def sscd_model_loss_per_example(
    mixed_labels: tf.Tensor,
    mixed_logits: tf.Tensor,
    peer_mixed_logits: tf.Tensor,
    exchanged_logits: tf.Tensor,
    peer_exchanged_logits: tf.Tensor,
    box: tf.Tensor,
    box_weight: tf.Tensor,
    rest_weight: tf.Tensor,
    batch: int | tf.Tensor,
) -> dict[str, tf.Tensor]:
    """One student's SSCD loss ``(Dice+CE)_mix/2 + Dice(p_k, argmax p_k') + Dice(p_k(X̃), argmax p_k'(X̃))``.

    Args:
        mixed_labels: ``(N, H, W)`` labels of the copy-paste mixed images (ground truth
            where the pixel came from a labelled image, teacher pseudo label elsewhere).
        mixed_logits / peer_mixed_logits: this student's and the other student's logits on
            their own views of the mixed images, ``(N, H, W, C)``.
        exchanged_logits / peer_exchanged_logits: both students on the same images ``X̃``
            (the two views after the hard-patch exchange), ``(M, H, W, C)``.
        box: ``(N, H, W)`` pasted boxes (1 inside).
        box_weight / rest_weight: ``(N,)`` weights of the Dice+CE inside and outside the
            box (the released code: 1 for ground-truth parts, 0.5 for pseudo-labelled ones).
        batch: the number of examples ``B``; ``N`` and ``M`` hold whole groups of ``B``
            images, image ``i`` of each group belonging to example ``i``.

    Returns ``{"mix", "cross", "exchange", "total"}``, each ``(B,)``. Every term is averaged
    over its groups: with the two copy-paste directions (labelled box into unlabelled
    image and back) as the two groups, the mean of their Dice+CE is the ``(·)_mix/2`` of docs/methods.md §4.
    """
    box = tf.cast(box, tf.float32)
    inside = region_ce_dice_per_example(mixed_labels, mixed_logits, box)
    outside = region_ce_dice_per_example(mixed_labels, mixed_logits, 1.0 - box)
    mix = tf.cast(box_weight, tf.float32) * inside + tf.cast(rest_weight, tf.float32) * outside
    terms = {
        "mix": fold_groups(mix, batch),
        "cross": fold_groups(cross_pseudo_dice_per_example(mixed_logits, peer_mixed_logits), batch),
        "exchange": fold_groups(cross_pseudo_dice_per_example(exchanged_logits, peer_exchanged_logits), batch),
    }
    terms["total"] = terms["mix"] + terms["cross"] + terms["exchange"]
    return terms


__all__ = [
    "CURRICULUM",
    "as_class_probabilities",
    "copy_paste_mix",
    "cross_pseudo_dice_per_example",
    "curriculum_logits",
    "curriculum_weights",
    "entropy_hard_mask",
    "entropy_map",
    "fold_groups",
    "fold_weights",
    "hard_patch_exchange",
    "largest_component_per_class",
    "largest_component_tf",
    "paste",
    "patch_difficulty",
    "pseudo_variance",
    "pv_gated_pseudo_labels",
    "random_box_mask",
    "region_ce_dice_per_example",
    "sscd_model_loss_per_example",
    "stage_for_epoch",
]
