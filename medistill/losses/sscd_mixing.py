"""SSCD's hard regions and mixing (docs/methods.md §4): entropy masks, copy-paste, patch exchange.

* :func:`entropy_map` and :func:`entropy_hard_mask`: where the teacher is uncertain;
* :func:`random_box_mask`, :func:`paste`, :func:`copy_paste_mix`: a random box of one image
  (and its labels) pasted into another;
* :func:`patch_difficulty` and :func:`hard_patch_exchange`: the least confident patches of
  one view swapped with the most confident of the other.

Random choices come from stateless ops keyed by a ``(2,)`` integer seed tensor, so the same
seed gives the same result.
"""

from __future__ import annotations

import tensorflow as tf

from medistill.losses.sscd_pseudo import as_class_probabilities


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
