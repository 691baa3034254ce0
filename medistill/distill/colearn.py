"""Co-learning: fine-tune LiteMedSAM's mask decoder jointly with the student.

MedDistill's name promises co-learning, but its released code only ever trains the
student (docs/methods.md §1). Here the teacher's mask decoder learns too:

- **What trains.** Only the mask decoder (:attr:`DecoderTeacher.trainable_variables`).
  The image encoder is frozen and never run: the ``(64, 64, 256)`` image embeddings come
  from the teacher cache. The prompt encoder is frozen by default (recommended: its
  box embeddings are a handful of vectors tied to the box coordinates; moving them
  buys nothing and can break the prompt geometry); ``train_prompt_encoder=True``
  trains its two box-corner embeddings and the no-mask embedding as well.
- **What the decoder learns from.** :func:`colearn_loss_per_example`: BCE of the
  decoder's fused logits against the student's hard labels, only on pixels where the
  student is confident (``p > c`` or ``p < 1 − c``, ``c = 0.9``) *and* agrees with the
  teacher targets the student is trained on (same side of 0.5). The student side is a
  constant; the student keeps learning from the teacher through the main losses.
- **Why the agreement gate.** Where the student contradicts the teacher, the student is
  more likely wrong (it is still learning the teacher's mask) than right; training the
  decoder there would pull it towards the student's errors, and both would drift
  together (confirmation bias). On the agreed, confident pixels the decoder is pushed to
  a crisp consensus, so soft, hesitant teacher masks sharpen where two different models
  concur, and the decoder cannot drift away from what it predicted at the last refresh.
- **When targets refresh.** The student's targets ``S`` and uncertainties ``σ²`` stay
  fixed between refreshes; every ``K`` epochs (``K`` chosen by the trainer)
  :func:`refresh_targets` recomputes them from the updated decoder.

Frames: the teacher and :mod:`medistill.data.preprocess` both scale the longest side
(``Geometry.for_size``: scale ``size / max(H, W)``, extents rounded half up) and pad at
the bottom and right, so the student's ``S`` frame is LiteMedSAM's 256 frame scaled by
``S / 256`` (up to the rounding of the resized extents, under one pixel). Decoder logits
are therefore resized from 256 to ``S`` as whole squares: averaging ``256/S`` blocks when
``S`` divides 256 (exactly OpenCV's INTER_AREA), bilinear with antialiasing otherwise.
Logits are resized before the sigmoid (as the teacher does); the cached ``S`` was
area-resized as probabilities, which differs only at mask edges. Boxes go in the 256
frame: ``litemedsam.preprocessing.scale_boxes(boxes, Geometry.for_size(H, W, 256))``.

Example::

    model, info = load_litemedsam()                      # or LiteMedSAM() for tests
    decoder = DecoderTeacher(model)                       # build it in strategy.scope()
    boxes, valid = pad_boxes([boxes_256_a, boxes_256_b])  # (N, M, 4), (N, M)
    with tf.GradientTape() as tape:
        prob, logits = decoder.soft_masks(embeddings, boxes, valid, out_size=64, training=True)
        loss = tf.nn.compute_average_loss(
            colearn_loss_per_example(logits, student_prob, targets), global_batch_size=gb)
    grads = tape.gradient(loss, decoder.trainable_variables)
    ...
    targets, sigma2 = refresh_targets(decoder, embeddings, boxes, valid, out_size=64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from medistill.data.preprocess import Geometry
from medistill.errors import MedistillError
from medistill.losses.distillation import flat_mask_pair
from medistill.teachers.litemedsam.preprocessing import IMAGE_SIZE as LITEMEDSAM_SIZE
from medistill.teachers.litemedsam.preprocessing import scale_boxes

NO_BOX_LOGIT = -100.0  # logit of an image without a valid box (probability set to exactly 0)


def resize_square(maps: tf.Tensor, out_size: int) -> tf.Tensor:
    """``(N, F, F, C)`` → ``(N, S, S, C)``: block means when ``S`` divides ``F``, else antialiased bilinear."""
    frame = int(maps.shape[1])
    if out_size == frame:
        return maps
    if frame % out_size == 0:
        factor = frame // out_size
        return tf.nn.avg_pool2d(maps, factor, factor, "VALID")
    return tf.image.resize(maps, (out_size, out_size), method="bilinear", antialias=True)


def fuse_box_logits(box_logits: tf.Tensor, valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(B, M, S, S)`` per-box logits and ``(B, M)`` validity → fused ``(prob, logits)``, each ``(B, S, S)``.

    Per image, the max over its valid boxes (σ is monotone, so the max of the logits is
    the max of the probabilities); an image without a valid box gets probability 0
    (logit :data:`NO_BOX_LOGIT`).
    """
    valid = tf.cast(valid, tf.bool)
    masked = tf.where(valid[:, :, None, None], box_logits, tf.float32.min)
    fused = tf.reduce_max(masked, axis=1)
    has_box = tf.reduce_any(valid, axis=1)[:, None, None]
    logits = tf.where(has_box, fused, NO_BOX_LOGIT)
    prob = tf.where(has_box, tf.sigmoid(logits), 0.0)
    return prob, logits


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise MedistillError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class DecoderTeacher:
    """LiteMedSAM's prompt encoder + mask decoder on cached image embeddings, trainable.

    ``model`` is a built :class:`~medistill.teachers.litemedsam.model.LiteMedSAM`
    (``load_litemedsam(checkpoint)[0]``, or a random ``LiteMedSAM()`` in tests); its mask
    decoder is fine-tuned *in place*. Create it (load the model) inside
    ``strategy.scope()`` so its variables are mirrored; checkpoint :meth:`trackables`.
    """

    def __init__(self, model: Any, train_prompt_encoder: bool = False) -> None:
        if not model.built:
            model.build()
        self.model = model
        self.train_prompt_encoder = bool(train_prompt_encoder)
        self.image_size = int(model.image_size)
        self.embedding_size = int(model.embedding_size)
        self.embed_dim = int(model.config["embed_dim"])
        self.info: dict[str, Any] = {}  # the converted checkpoint's info (sha256 …) from from_checkpoint
        self._inference: dict[tuple[int, int, int], Any] = {}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | None = None, train_prompt_encoder: bool = False
                        ) -> DecoderTeacher:
        """Load LiteMedSAM (converted, cached) with :func:`load_litemedsam`; ``info`` kept as :attr:`info`."""
        from medistill.teachers.litemedsam.convert import load_litemedsam

        model, info = load_litemedsam(checkpoint)
        teacher = cls(model, train_prompt_encoder)
        teacher.info = info
        return teacher

    @property
    def mask_decoder(self):
        return self.model.mask_decoder

    @property
    def prompt_encoder(self):
        return self.model.prompt_encoder

    @property
    def trainable_variables(self) -> list:
        """The variables co-learning updates: every mask-decoder weight on the single-mask path.

        Excluded because they never reach the single-mask output: the multimask
        hypernetworks (1..3) and the IoU head. With ``train_prompt_encoder`` also the
        box-corner embeddings (``point_embeddings_2/3``) and ``no_mask_embed``.
        """
        decoder = self.mask_decoder
        unused = {id(v) for layer in [*decoder.hypernetworks[1:], decoder.iou_prediction_head]
                  for v in layer.trainable_variables}
        variables = [v for v in decoder.trainable_variables if id(v) not in unused]
        if self.train_prompt_encoder:
            prompt = self.prompt_encoder
            variables += [prompt.point_embeddings[2], prompt.point_embeddings[3], prompt.no_mask_embed]
        return variables

    def trackables(self) -> dict[str, Any]:
        """What a ``tf.train.Checkpoint`` must hold to resume co-learning (the loop's ``extra_trackables``).

        The trained variables are listed one by one, keyed by their path inside their
        layer: ``tf.train.Checkpoint(decoder=model.mask_decoder)`` would silently skip
        every sub-layer the port keeps in a Python list (the transformer blocks, the
        hypernetworks), because Keras 3's tracked lists are invisible to TF checkpoints.
        """
        named = {}
        for variable in self.trainable_variables:
            for layer in (self.mask_decoder, self.prompt_encoder):
                prefix = f"{layer.name}/"
                if prefix in variable.path:
                    key = prefix + variable.path.split(prefix, 1)[1]
                    named[key.replace("/", ".")] = variable
        if len(named) != len(self.trainable_variables):
            raise AssertionError("internal error: co-learning variables without a unique path")
        return {"colearn_decoder": tf.train.Checkpoint(**named)}

    def box_logits(self, embeddings: tf.Tensor, boxes: tf.Tensor, out_size: int) -> tf.Tensor:
        """``(B, 64, 64, 256)`` embeddings, ``(B, M, 4)`` boxes (256 frame) → ``(B, M, S, S)`` logits.

        Each box is decoded against its own image's embedding (the embedding is repeated
        M times, so the decoder sees one embedding per box).
        """
        out_size = _positive_int(out_size, "out_size")
        embeddings = tf.cast(embeddings, self.mask_decoder.compute_dtype)
        boxes = tf.cast(boxes, tf.float32)
        batch, per_image = tf.shape(boxes)[0], tf.shape(boxes)[1]
        flat_boxes = tf.reshape(boxes, (-1, 4))
        flat_embeddings = tf.repeat(embeddings, per_image, axis=0)
        sparse, dense = self.prompt_encoder(flat_boxes)
        if not self.train_prompt_encoder:
            sparse, dense = tf.stop_gradient(sparse), tf.stop_gradient(dense)
        position = tf.stop_gradient(self.prompt_encoder.dense_positional_encoding())
        masks, _ = self.mask_decoder(flat_embeddings, position, sparse, dense, multimask_output=False)
        logits = tf.transpose(tf.cast(masks, tf.float32), (0, 2, 3, 1))  # (B*M, 256, 256, 1)
        logits = resize_square(logits, out_size)
        return tf.reshape(logits, (batch, per_image, out_size, out_size))

    def soft_masks(self, embeddings: tf.Tensor, boxes: tf.Tensor, valid: tf.Tensor, out_size: int,
                   training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Fused soft masks ``(prob, logits)``, each ``(B, out_size, out_size)`` float32.

        Per image: the max over its valid boxes of σ(decoder logits), zeros without a valid
        box (see :func:`fuse_box_logits`). ``boxes`` ``(B, M, 4)`` xyxy in the 256 frame,
        padded; ``valid`` ``(B, M)`` bool marks the real ones. Works inside a
        ``tf.function`` with fixed ``B`` and ``M``. ``training`` is accepted for symmetry
        with Keras models: the decoder has no dropout or batch normalisation, so both modes
        compute the same thing; gradients flow whenever a tape watches.
        """
        del training
        return fuse_box_logits(self.box_logits(embeddings, boxes, out_size), valid)

    def _inference_fn(self, batch: int, per_image: int, out_size: int):
        key = (batch, per_image, out_size)
        if key not in self._inference:
            signature = [tf.TensorSpec((batch, self.embedding_size, self.embedding_size, self.embed_dim), tf.float32),
                         tf.TensorSpec((batch, per_image, 4), tf.float32),
                         tf.TensorSpec((batch, per_image), tf.bool)]

            def infer(embeddings, boxes, valid):
                logits = self.box_logits(embeddings, boxes, out_size)
                prob, _ = fuse_box_logits(logits, valid)
                return prob, tf.sigmoid(logits)

            self._inference[key] = tf.function(infer, input_signature=signature)
        return self._inference[key]


def colearn_loss_per_example(decoder_logits: tf.Tensor, student_prob: tf.Tensor, teacher_prob: tf.Tensor,
                             confidence: float = 0.9) -> tf.Tensor:
    """The decoder's co-learning loss, ``(B,)``: gated BCE against the student's hard labels.

    A pixel counts when the student is confident (``p > c`` or ``p < 1 − c``) and on the
    same side of 0.5 as the teacher target (``p > 0.5`` iff ``t > 0.5``); its label is
    ``p > 0.5``. The loss is the mean BCE over the counted pixels, 0 when none count.
    Student and teacher sides are constants (``stop_gradient``); maps ``(B, S, S[, 1])``.
    """
    if not 0.5 <= float(confidence) < 1.0:
        raise MedistillError(f"co-learning confidence must be in [0.5, 1), got {confidence!r}")
    logits, student = flat_mask_pair(decoder_logits, student_prob, "colearn_loss_per_example")
    _, teacher = flat_mask_pair(decoder_logits, teacher_prob, "colearn_loss_per_example")
    student, teacher = tf.stop_gradient(student), tf.stop_gradient(teacher)
    c = float(confidence)
    confident = (student > c) | (student < 1.0 - c)
    agrees = tf.equal(student > 0.5, teacher > 0.5)
    selected = tf.cast(confident & agrees, tf.float32)
    labels = tf.cast(student > 0.5, tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.math.divide_no_nan(tf.reduce_sum(bce * selected, axis=1), tf.reduce_sum(selected, axis=1))


def boxes_in_teacher_frame(boxes: np.ndarray, height: int, width: int,
                           size: int = LITEMEDSAM_SIZE) -> np.ndarray:
    """Original-pixel boxes → LiteMedSAM's ``size`` frame, scaled and truncated as the teacher did."""
    return scale_boxes(np.asarray(boxes, np.float32).reshape(-1, 4), Geometry.for_size(height, width, size), size)


def pad_boxes(per_image: Sequence[np.ndarray], max_boxes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A list of ``(n_i, 4)`` box arrays → ``(N, M, 4)`` float32 boxes and ``(N, M)`` bool validity.

    ``M`` is ``max_boxes`` or the largest ``n_i`` (at least 1); padded slots are zero
    boxes marked invalid. An image with more than ``max_boxes`` boxes is an error.
    """
    counts = [len(np.asarray(b).reshape(-1, 4)) for b in per_image]
    width = max([1, *counts]) if max_boxes is None else _positive_int(max_boxes, "max_boxes")
    boxes = np.zeros((len(counts), width, 4), np.float32)
    valid = np.zeros((len(counts), width), bool)
    for i, (array, count) in enumerate(zip(per_image, counts)):
        if count > width:
            raise MedistillError(f"image {i} has {count} boxes but max_boxes is {width}; raise max_boxes")
        boxes[i, :count] = np.asarray(array, np.float32).reshape(-1, 4)
        valid[i, :count] = True
    return boxes, valid


def _check_refresh_inputs(decoder: DecoderTeacher, embeddings, boxes: np.ndarray, valid: np.ndarray,
                          extents: np.ndarray | None, out_size: int) -> None:
    n, e, d = len(embeddings), decoder.embedding_size, decoder.embed_dim
    if tuple(embeddings.shape) != (n, e, e, d):
        raise MedistillError(f"refresh_targets: embeddings must be (N, {e}, {e}, {d}), got {tuple(embeddings.shape)}")
    if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4 or valid.shape != boxes.shape[:2]:
        raise MedistillError(f"refresh_targets: boxes must be (N, M, 4) and valid (N, M) with N = {n}, "
                             f"got {boxes.shape} and {valid.shape}; use pad_boxes()")
    if extents is not None and (extents.shape != (n, 2) or extents.min(initial=1) < 1
                                or extents.max(initial=1) > out_size):
        raise MedistillError(f"refresh_targets: extents must be (N, 2) resized (height, width) within "
                             f"1..{out_size}, got shape {extents.shape}")


def refresh_targets(decoder: DecoderTeacher, embeddings: np.ndarray, boxes: np.ndarray, valid: np.ndarray,
                    out_size: int, batch: int = 8, extents: np.ndarray | None = None,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Recompute the student's targets from the (updated) decoder.

    Args:
        embeddings: ``(N, 64, 64, 256)`` float16/32, a NumPy array or anything sliced
            like one (an h5py dataset).
        boxes, valid: ``(N, M, 4)`` boxes in the 256 frame and ``(N, M)`` validity
            (:func:`pad_boxes`).
        out_size: side of the targets (the student's input size).
        batch: images per decoder call (each holds ``M`` decoded boxes).
        extents: optional ``(N, 2)`` resized ``(height, width)`` of each image in the
            ``out_size`` frame (``Geometry.for_size(H, W, out_size)``); when given, each
            box's variance is taken over that unpadded region (the teacher's rule, which
            takes it over the original image), otherwise over the whole square.
        progress: show a progress bar.

    Returns:
        ``(N, S, S)`` float32 fused soft masks and ``(N,)`` float32 uncertainties: the mean
        over valid boxes of each box mask's variance (0 for an image without a box).
    """
    out_size = _positive_int(out_size, "out_size")
    batch = _positive_int(batch, "batch")
    boxes = np.asarray(boxes, np.float32)
    valid = np.asarray(valid, bool)
    extents = None if extents is None else np.asarray(extents, np.int64)
    _check_refresh_inputs(decoder, embeddings, boxes, valid, extents, out_size)
    n, per_image = boxes.shape[:2]
    infer = decoder._inference_fn(batch, per_image, out_size)
    targets = np.zeros((n, out_size, out_size), np.float32)
    uncertainty = np.zeros((n,), np.float32)
    with tqdm(total=n, desc="refreshing teacher targets", unit="image", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            chunk = [np.asarray(embeddings[start:stop], np.float32), boxes[start:stop], valid[start:stop]]
            pad = batch - (stop - start)  # pad the last chunk: one traced shape
            chunk = [np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) for a in chunk]
            fused, box_prob = (np.asarray(t) for t in infer(*chunk))
            targets[start:stop] = fused[: stop - start]
            for i in range(start, stop):
                h, w = (out_size, out_size) if extents is None else extents[i]
                masks = box_prob[i - start][valid[i], :h, :w].astype(np.float64)
                if len(masks):
                    uncertainty[i] = masks.reshape(len(masks), -1).var(axis=1).mean()
            bar.update(stop - start)
    return targets, uncertainty
