"""The pieces of SSCD (semi-supervised curriculum decoupling, docs/methods.md §4) as plain functions.

* curriculum: :func:`curriculum_weights`, :func:`stage_for_epoch`, :func:`fold_weights`,
  :func:`curriculum_logits` — which decoder outputs (coarse to fine) make the prediction;
* pseudo labels: :func:`pseudo_variance`, :func:`pv_gated_pseudo_labels`,
  :func:`largest_component_per_class` (numpy) and :func:`largest_component_tf`;
* hard regions and mixing: :func:`entropy_map`, :func:`entropy_hard_mask`,
  :func:`random_box_mask`, :func:`paste`, :func:`copy_paste_mix`,
  :func:`patch_difficulty`, :func:`hard_patch_exchange`;
* losses, per example ``(B,)``, float32: :func:`region_ce_dice_per_example`,
  :func:`cross_pseudo_dice_per_example`, :func:`sscd_model_loss_per_example`.

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
from scipy import ndimage

from medistill.losses.cakd import class_logits
from medistill.losses.segmentation import soft_dice_per_example

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


# -- pseudo labels ---------------------------------------------------------------
def as_class_probabilities(probs: tf.Tensor) -> tf.Tensor:
    """``(..., K)`` probabilities as float32; a one-channel map ``p`` becomes ``[1 − p, p]``."""
    probs = tf.cast(tf.convert_to_tensor(probs), tf.float32)
    if probs.shape[-1] == 1:
        return tf.concat([1.0 - probs, probs], axis=-1)
    return probs


def pseudo_variance(probs: tf.Tensor) -> tf.Tensor:
    """``PV = (n−1)/n · Σ_c (p_c − (1−p_c)/(n−1))²`` over the ``n = K`` classes: ``(..., K) -> (...)``.

    ``(1−p_c)/(n−1)`` is the mean probability of the other classes. PV is 0 for the uniform
    distribution and 1 for a one-hot one; it equals ``(n·Σ p_c² − 1)/(n − 1)``.
    """
    probs = as_class_probabilities(probs)
    n = probs.shape[-1]
    if n is None or n < 2:
        raise ValueError(f"pseudo_variance needs at least two classes, got probabilities of shape {probs.shape}")
    others = (1.0 - probs) / (n - 1)
    return (n - 1) / n * tf.reduce_sum(tf.square(probs - others), axis=-1)


def pv_gated_pseudo_labels(probs: tf.Tensor, pv_threshold: float = 0.8,
                           second_threshold: float = 0.3) -> tf.Tensor:
    """Pseudo labels ``(B, H, W)`` int32 from probabilities ``(B, H, W, K)`` with the PV gate.

    Reading of docs/methods.md §4 ("runner-up class where PV > 0.8 and p₂ > 0.3,
    arg-max elsewhere"), which is also what the authors' released code computes: at a pixel where
    ``pseudo_variance > pv_threshold`` *and* the second-highest probability ``p₂ >
    second_threshold``, the label is the runner-up class (the top-2 class); everywhere
    else it is the arg-max class. The seed README says nothing more.

    Consequence worth knowing: ``p₂ > 0.3`` forces ``p₁ < 0.7`` and so ``Σ p² ≤ 0.58``,
    i.e. ``PV ≤ (0.58·n − 1)/(n − 1) < 0.58``; with the default thresholds the gate can never
    open and the labels equal the arg-max. The gate acts only with a lower
    ``pv_threshold`` (or ``second_threshold``); both are options of the SSCD recipe.

    ``K = 2``: ``PV = (p₁ − p₂)²`` and the runner-up is simply the other class, so an
    open gate flips the label. A one-channel map (``p = P(foreground)``) is treated as the
    two classes ``[1 − p, p]``; the labels are then 0/1.
    """
    probs = as_class_probabilities(probs)
    top = tf.math.top_k(probs, k=2)
    gate = (pseudo_variance(probs) > pv_threshold) & (top.values[..., 1] > second_threshold)
    return tf.where(gate, top.indices[..., 1], top.indices[..., 0])


_EIGHT_CONNECTED = np.ones((3, 3), bool)


def largest_component_per_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep only the largest 8-connected component of every foreground class, per image.

    ``labels`` is ``(B, H, W)`` (or one ``(H, W)`` map); pixels of smaller components become
    background (0). Between equally large components the first in raster order is kept.
    A class absent from an image stays absent.
    """
    labels = np.asarray(labels)
    single = labels.ndim == 2
    batch = labels[None] if single else labels
    if batch.ndim != 3:
        raise ValueError(f"labels must be (B, H, W) or (H, W), got shape {labels.shape}")
    cleaned = np.zeros_like(batch)
    for index, image in enumerate(batch):
        for cls in range(1, max(int(num_classes), 2)):
            components, count = ndimage.label(image == cls, structure=_EIGHT_CONNECTED)
            if count == 0:
                continue
            sizes = np.bincount(components.ravel())[1:]
            cleaned[index][components == 1 + int(np.argmax(sizes))] = cls
    return cleaned[0] if single else cleaned


def largest_component_tf(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """:func:`largest_component_per_class` inside a graph (``tf.numpy_function``; no gradient)."""
    labels = tf.cast(labels, tf.int32)
    cleaned = tf.numpy_function(lambda array: largest_component_per_class(array, num_classes),
                                [labels], tf.int32, stateful=False, name="largest_component")
    cleaned.set_shape(labels.shape)
    return cleaned


# -- hard regions, mixing, patch exchange ---------------------------------------------
def entropy_map(probs: tf.Tensor) -> tf.Tensor:
    """Shannon entropy (natural log) over the classes: ``(..., K) -> (...)``; ``0·log 0 = 0``."""
    probs = as_class_probabilities(probs)
    return -tf.reduce_sum(tf.math.xlogy(probs, probs), axis=-1)


def entropy_hard_mask(probs: tf.Tensor, percentile: float = 80.0) -> tf.Tensor:
    """``M_E = 1[entropy ≥ per-image percentile]``: ``(B, H, W, K) -> (B, H, W)`` float32.

    The threshold of an image with ``N`` pixels is its entropy of rank ``⌊percentile·N/100⌋``
    in ascending order (0-based, at most ``N − 1``); without ties the mask holds exactly the
    ``N − ⌊percentile·N/100⌋`` most uncertain pixels (the top 20 % for 80). The mask
    carries no gradient.
    """
    if not 0.0 <= float(percentile) < 100.0:
        raise ValueError(f"the entropy percentile must be in [0, 100), got {percentile!r}")
    entropy = tf.stop_gradient(entropy_map(probs))
    shape = tf.shape(entropy)
    flat = tf.reshape(entropy, [shape[0], -1])
    count = tf.shape(flat)[1]
    rank = tf.minimum(tf.cast(tf.floor(float(percentile) / 100.0 * tf.cast(count, tf.float32)), tf.int32),
                      count - 1)
    threshold = tf.gather(tf.sort(flat, axis=1), rank, axis=1)
    return tf.cast(entropy >= threshold[:, None, None], tf.float32)


def random_box_mask(batch: int | tf.Tensor, height: int, width: int, seed: tf.Tensor,
                    box_fraction: float = 2.0 / 3.0) -> tf.Tensor:
    """One random axis-aligned box per image: ``(batch, height, width)`` float32, 1 inside.

    The box is ``round(box_fraction·height) × round(box_fraction·width)`` (at least one
    pixel) at a uniformly drawn position that keeps it inside the image.
    """
    if not 0.0 < float(box_fraction) <= 1.0:
        raise ValueError(f"box_fraction must be in (0, 1], got {box_fraction!r}")
    box_h = max(1, int(round(box_fraction * height)))
    box_w = max(1, int(round(box_fraction * width)))
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), num=2)
    top = tf.random.stateless_uniform([batch], seeds[0], minval=0, maxval=height - box_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([batch], seeds[1], minval=0, maxval=width - box_w + 1, dtype=tf.int32)
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + box_h)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + box_w)
    return tf.cast(in_rows[:, :, None] & in_cols[:, None, :], tf.float32)


def paste(base: tf.Tensor, patch: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """``base`` outside ``box`` and ``patch`` inside it; images ``(B, H, W, C)`` or label maps ``(B, H, W)``."""
    box = tf.convert_to_tensor(box)
    inside = box > 0.5
    if base.shape.rank == 4:
        inside = inside[..., None]
    return tf.where(inside, patch, base)


def copy_paste_mix(x_a: tf.Tensor, y_a: tf.Tensor, x_b: tf.Tensor, y_b: tf.Tensor, seed: tf.Tensor,
                   box_fraction: float = 2.0 / 3.0) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Paste a random box of image ``b`` into image ``a`` (pairwise over the batch).

    Returns ``(x, y, box)``: the mixed images ``(B, H, W, C)``, their label maps ``(B, H, W)``
    (``y_b`` inside the box, ``y_a`` outside) and the boxes ``(B, H, W)`` (1 inside).
    """
    x_a = tf.convert_to_tensor(x_a)
    shape = tf.shape(x_a)
    height, width = x_a.shape[1], x_a.shape[2]
    if height is None or width is None:
        raise ValueError("copy_paste_mix needs images with a known height and width")
    box = random_box_mask(shape[0], height, width, seed, box_fraction)
    return paste(x_a, x_b, box), paste(tf.convert_to_tensor(y_a), y_b, box), box


def _check_grid(height: int | None, width: int | None, grid: int) -> None:
    if grid < 1 or height is None or width is None or height % grid or width % grid:
        raise ValueError(f"the patch grid {grid}x{grid} must divide the image size {height}x{width}")


def patch_difficulty(confidence: tf.Tensor, grid: int = 8) -> tf.Tensor:
    """Difficulty of each patch of a ``grid × grid`` split: ``(B, H, W) -> (B, grid, grid)``.

    A patch's confidence is the mean of ``confidence`` (e.g. the max class probability)
    over its pixels; its difficulty is the mean absolute difference between its confidence
    and that of its 4-connected neighbour patches (2 to 4 of them; 0 for a 1×1 grid).
    """
    confidence = tf.cast(confidence, tf.float32)
    height, width = confidence.shape[1], confidence.shape[2]
    _check_grid(height, width, grid)
    blocks = tf.reshape(confidence, [-1, grid, height // grid, grid, width // grid])
    means = tf.reduce_mean(blocks, axis=[2, 4])
    total = tf.zeros_like(means)
    count = tf.zeros_like(means)
    for axis, step in ((1, means[:, 1:, :] - means[:, :-1, :]), (2, means[:, :, 1:] - means[:, :, :-1])):
        step = tf.abs(step)
        ones = tf.ones_like(step)
        before = [[0, 0], [0, 0], [0, 0]]
        after = [[0, 0], [0, 0], [0, 0]]
        before[axis], after[axis] = [1, 0], [0, 1]
        # Each difference belongs to the patch before it and to the patch after it.
        total += tf.pad(step, after) + tf.pad(step, before)
        count += tf.pad(ones, after) + tf.pad(ones, before)
    return total / tf.maximum(count, 1.0)


def _to_patches(images: tf.Tensor, grid: int) -> tf.Tensor:
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    blocks = tf.reshape(images, [-1, grid, height // grid, grid, width // grid, channels])
    blocks = tf.transpose(blocks, [0, 1, 3, 2, 4, 5])
    return tf.reshape(blocks, [-1, grid * grid, (height // grid) * (width // grid) * channels])


def _from_patches(patches: tf.Tensor, grid: int, like: tf.Tensor) -> tf.Tensor:
    height, width, channels = like.shape[1], like.shape[2], like.shape[3]
    blocks = tf.reshape(patches, [-1, grid, grid, height // grid, width // grid, channels])
    blocks = tf.transpose(blocks, [0, 1, 3, 2, 4, 5])
    return tf.reshape(blocks, [-1, height, width, channels])


def _replace_patches(patches: tf.Tensor, positions: tf.Tensor, donors: tf.Tensor) -> tf.Tensor:
    # patches (B, P, D); positions (B, k) distinct per image; donors (B, k, D).
    slots = tf.one_hot(positions, tf.shape(patches)[1], dtype=patches.dtype)  # (B, k, P)
    keep = 1.0 - tf.reduce_sum(slots, axis=1)
    return patches * keep[..., None] + tf.einsum("bkp,bkd->bpd", slots, donors)


def hard_patch_exchange(x_weak: tf.Tensor, x_strong: tf.Tensor, conf_weak: tf.Tensor, conf_strong: tf.Tensor,
                        grid: int = 8, patches: int = 1) -> tuple[tf.Tensor, tf.Tensor]:
    """Exchange the hardest patches between two views of the same images.

    Both views ``(B, H, W, C)`` are split into a ``grid × grid`` array of patches, and each
    view's patches are ranked by :func:`patch_difficulty` of its own confidence map
    ``(B, H, W)``. Then, per image, the ``patches`` hardest patches of the strong view
    replace the ``patches`` easiest patches of the weak view, and the hardest patches of the
    weak view replace the easiest patches of the strong view (the i-th hardest goes to the
    place of the i-th easiest; ties go to the lowest patch index). Each view thus gains the
    other's hardest content in place of its own easiest. Returns ``(x_weak', x_strong')``.
    """
    x_weak = tf.convert_to_tensor(x_weak)
    x_strong = tf.convert_to_tensor(x_strong)
    _check_grid(x_weak.shape[1], x_weak.shape[2], grid)
    if not 1 <= patches <= grid * grid // 2:
        raise ValueError(f"can exchange 1..{grid * grid // 2} patches of a {grid}x{grid} grid, got {patches}")

    def ranked(confidence: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        difficulty = tf.reshape(patch_difficulty(confidence, grid), [-1, grid * grid])
        return tf.math.top_k(difficulty, patches).indices, tf.math.top_k(-difficulty, patches).indices

    hard_weak, easy_weak = ranked(conf_weak)
    hard_strong, easy_strong = ranked(conf_strong)
    weak_patches = _to_patches(x_weak, grid)
    strong_patches = _to_patches(x_strong, grid)
    new_weak = _replace_patches(weak_patches, easy_weak, tf.gather(strong_patches, hard_strong, batch_dims=1))
    new_strong = _replace_patches(strong_patches, easy_strong, tf.gather(weak_patches, hard_weak, batch_dims=1))
    return _from_patches(new_weak, grid, x_weak), _from_patches(new_strong, grid, x_strong)


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
