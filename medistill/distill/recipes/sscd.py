"""SSCD (docs/methods.md §4): semi-supervised curriculum distillation with two students.

Data. The training images are split once (by source file, seeded by ``--seed``) into a
labelled part, ``--labelled-fraction`` of them, and an unlabelled part read *without*
masks (:func:`image_only_loader` never opens a mask file; the unlabelled stream holds
images only). Every step takes ``--batch`` labelled and as many unlabelled images, each
stream repeated and reshuffled on its own. The weak view is the geometric part of the
supervised augmentation (flips, 90° turns, small rotation/zoom); the strong view
(:func:`strong_view`) adds contrast and brightness jitter, Gaussian noise and a cutout
square, per image, on top of the same weak view, so the two views stay aligned.

Teacher. Frozen: ``--teacher-model``, or ``--train-teacher NAME``, which runs
:class:`SSCDTeacher` (stage 0) on the labelled part only: pairwise copy-paste mixing of
labelled images and entropy-based hard-region amplification.

Students. Two networks of the same design (the same builder, so different initial
weights drawn in turn from the run's seed); student 1 sees weak views, student 2
strong ones. Per step, with ``B`` labelled images ``x_l`` and ``B`` unlabelled ``x_u``:

1. teacher pseudo labels for ``x_u`` (each view): PV gate, then the largest connected
   component per class (:func:`medistill.losses.sscd.pv_gated_pseudo_labels`);
2. copy-paste both ways with one random box per pair (``box_fraction`` 2/3): a box of
   ``x_l`` into ``x_u`` and a box of ``x_u`` into ``x_l``; ground truth on labelled
   pixels (weight 1), pseudo labels on unlabelled ones (weight ``pseudo_weight`` 0.5);
3. each student's prediction is the curriculum mix ``Σ w_i z_i`` of its deep-supervision
   heads (coarse to fine), ``w`` from stage ``1 + epoch·5 // epochs``
   (:func:`~medistill.losses.sscd.stage_for_epoch`): ``[1,0,0,0] → … → [0,0,0,1]``; a
   student with fewer than four heads gets the four weights folded onto its heads
   (``curriculum: false``, the default: the finest head alone from the first epoch; the paper's
   curriculum is ``curriculum: true``);
4. loss per student ``(Dice+CE)_mix/2 + Dice(p_k, argmax p_k') + Dice(p_k(X̃), argmax
   p_k'(X̃))`` with ``X̃`` the weak and strong mixed images, after the hard-patch exchange
   when ``patch_exchange`` is on (default off), seen by both students;
5. hard-region amplification on the labelled images: ``M_E`` = pixels at or above the
   80th percentile of the student's entropy, extra Dice+CE on ``x_l ⊙ M_E`` inside
   ``M_E`` (weight ``hard_region_weight``).

Both students are validated every epoch; the better one's weights are copied into the
exported model (a third network of the same design, never trained itself), so the best
epoch is the best Dice of either student and the export is that student (``history.csv``
column ``exported_candidate``: 1 weak view, 2 strong view). Optimiser: the paper's
SGD (``sgd_lr`` 0.01, ``momentum`` 0.9, ``sgd_weight_decay`` 1e-4; Keras applies the
decay decoupled from the gradient) under ``--schedule``; ``optimizer: "config"`` uses
``--optimizer/--lr/--weight-decay`` instead.

Example::

    python -m medistill distill --recipe sscd --data phantoms --out runs/sscd \\
        --train-teacher unet --labelled-fraction 0.25 --epochs 20 \\
        --recipe-options '{"patch_exchange": true}'
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import tensorflow as tf

from medistill.distill.recipes import taps
from medistill.distill.recipes.base import Recipe, RecipeContext
from medistill.distill.recipes.sscd_data import (  # the recipe's data helpers (re-exported)
    EndlessStream,
    image_only_loader,
    labelled_fraction_of,
    labelled_split,
    repeated_batches,
    step_seeds,
    strong_view,
    weak_augment,
)
from medistill.errors import MedistillError
from medistill.losses.cakd import class_probabilities
from medistill.losses.sscd import (
    STAGES,
    curriculum_logits,
    curriculum_weights,
    entropy_hard_mask,
    fold_weights,
    hard_patch_exchange,
    largest_component_tf,
    paste,
    pv_gated_pseudo_labels,
    random_box_mask,
    region_ce_dice_per_example,
    sscd_model_loss_per_example,
    stage_for_epoch,
)
from medistill.networks import feature_model

log = logging.getLogger("medistill.distill")

VIEWS = ("weak", "strong")  # student 1 sees the weak view, student 2 the strong one

OPTIONS: dict[str, Any] = {
    "optimizer": "sgd",
    "sgd_lr": 0.01,
    "momentum": 0.9,
    "sgd_weight_decay": 1e-4,
    "pv_threshold": 0.8,
    "second_threshold": 0.3,
    "largest_component": True,
    "pseudo_weight": 0.5,
    "box_fraction": 2.0 / 3.0,
    "hard_percentile": 80.0,
    "hard_region_weight": 1.0,
    "patch_exchange": False,
    "patch_grid": 8,
    "exchanged_patches": 1,
    "jitter": 0.2,
    "noise": 0.05,
    "cutout": 0.25,
    # The published coarse-to-fine curriculum is ``curriculum: true``. Off by default: in short 2D
    # runs it trains the exported head only in the last stages, at a small cosine rate (MNI152,
    # 20 epochs, seed 0: test Dice 0.552 with it, 0.819 without, 0.806 without a teacher).
    "curriculum": False,
}

_RANGES = {
    "sgd_lr": (0.0, None), "momentum": (0.0, 1.0), "sgd_weight_decay": (0.0, None),
    "pv_threshold": (0.0, 1.0), "second_threshold": (0.0, 1.0), "pseudo_weight": (0.0, None),
    "box_fraction": (0.0, 1.0), "hard_percentile": (0.0, 99.999), "hard_region_weight": (0.0, None),
    "jitter": (0.0, 0.99), "noise": (0.0, None), "cutout": (0.0, 1.0),
}


# -- options and optimiser --------------------------------------------------------
def check_options(options: dict[str, Any]) -> None:
    """Raise :class:`MedistillError` for an SSCD option of the wrong kind or out of range."""
    for name, (low, high) in _RANGES.items():
        value = options[name]
        bad_type = isinstance(value, bool) or not isinstance(value, (int, float))
        if bad_type or value < low or (high is not None and value > high) or (name == "box_fraction" and value == 0):
            limit = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise MedistillError(f"--recipe-options {name}={value!r}: must be a number {limit}")
    for name in ("largest_component", "patch_exchange", "curriculum"):
        if not isinstance(options[name], bool):
            raise MedistillError(f"--recipe-options {name}={options[name]!r}: must be true or false")
    for name in ("patch_grid", "exchanged_patches"):
        if isinstance(options[name], bool) or not isinstance(options[name], int) or options[name] < 1:
            raise MedistillError(f"--recipe-options {name}={options[name]!r}: must be a positive integer")
    if options["optimizer"] not in ("sgd", "config"):
        raise MedistillError(f"--recipe-options optimizer={options['optimizer']!r}: must be \"sgd\" "
                             "(the paper's SGD) or \"config\" (--optimizer/--lr/--weight-decay)")


class _SSCDBase(EndlessStream, Recipe):
    """What the SSCD teacher and students share: options and the optimiser."""

    option_defaults = OPTIONS

    def __init__(self, context: RecipeContext) -> None:
        super().__init__(context)
        check_options(self.options)
        self.labelled, self.unlabelled = labelled_split(
            context.train_samples, labelled_fraction_of(context.config), context.config.seed)

    def make_optimizer(self, variables: list[tf.Variable]) -> keras.optimizers.Optimizer:
        """The paper's SGD (option ``optimizer: "sgd"``) or the run's optimiser, built."""
        if self.options["optimizer"] == "config":
            return super().make_optimizer(variables)
        from medistill.train.precision import wrap_optimizer

        from medistill.train.schedules import learning_rate

        config = self.context.config
        steps = config.epochs * self.context.steps_per_epoch
        rate = learning_rate(float(self.options["sgd_lr"]), config.schedule, steps)
        optimizer = keras.optimizers.SGD(rate, momentum=float(self.options["momentum"]),
                                         weight_decay=float(self.options["sgd_weight_decay"]) or None)
        optimizer = wrap_optimizer(optimizer, self.context.policy)
        optimizer.build(variables)
        return optimizer

    def summary(self) -> dict[str, Any]:
        return {"labelled_images": len(self.labelled), "unlabelled_images": len(self.unlabelled)}


class SSCDTeacher(_SSCDBase):
    """Stage 0 (the teacher): labelled images only, pairwise copy-paste, hard-region amplification.

    Each image gets a random box (``box_fraction``) of the next image of its replica's
    batch pasted in, labels alike; loss ``(L_in + L_out + L_hard)/2`` with ``L_in``/``L_out``
    the Dice+CE inside/outside the box and ``L_hard`` the Dice+CE on ``mix ⊙ M_E`` inside
    the entropy mask ``M_E`` of the network's own prediction.
    """

    name = "sscd-teacher"
    needs_teacher = False

    def summary(self) -> dict[str, Any]:
        return {"labelled_images": len(self.labelled)}

    def build(self) -> None:
        self.student = self.build_student()
        self.trainable = list(self.student.trainable_variables)
        self.optimizer = self.make_optimizer(self.trainable)

    def stream(self) -> tf.data.Dataset:
        seed = self.context.config.seed
        labelled = repeated_batches(self.labelled, self.context, seed, augment=self.context.augment)
        height = width = self.context.preprocess.size
        fraction = float(self.options["box_fraction"])

        def with_box(pair, box_seed):
            x, y = pair
            return x, y, random_box_mask(tf.shape(x)[0], height, width, box_seed, fraction)

        return tf.data.Dataset.zip(labelled, step_seeds(seed + 2)).map(with_box).prefetch(tf.data.AUTOTUNE)

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        x, y, box = batch
        mixed_x = paste(x, tf.roll(x, 1, axis=0), box)
        mixed_y = paste(y, tf.roll(y, 1, axis=0), box)
        with tf.GradientTape() as tape:
            logits = self.student(mixed_x, training=True)
            hard = entropy_hard_mask(class_probabilities(logits), float(self.options["hard_percentile"]))
            hard_logits = self.student(mixed_x * hard[..., None], training=True)
            mix = (region_ce_dice_per_example(mixed_y, logits, box)
                   + region_ce_dice_per_example(mixed_y, logits, 1.0 - box))
            amplified = region_ce_dice_per_example(mixed_y, hard_logits, hard)
            loss = self.average((mix + amplified) / 2.0)
        self.apply_gradients(tape, loss)
        return {"loss": loss, "mix": self.average(mix / 2.0), "hard": self.average(amplified / 2.0)}


class SSCD(_SSCDBase):
    """SSCD's two students (see the module docstring); exports student 1."""

    name = "sscd"
    student_defaults = {"deep_supervision": True}
    teacher_recipe = SSCDTeacher

    @classmethod
    def teacher_build_options(cls, config) -> dict[str, Any]:
        """The student's design for a teacher of the same network ("the previous stage's model"),
        without the deep-supervision heads stage 0 does not train."""
        if not config.teacher_options and config.train_teacher == config.student:
            return {**cls.student_build_options(config.student_options), "deep_supervision": False}
        return super().teacher_build_options(config)

    def build(self) -> None:
        context, options = self.context, self.options
        if not self.unlabelled:
            log.warning("SSCD: --labelled-fraction %s leaves no unlabelled image; the labelled "
                        "images also serve, without their masks, as the unlabelled stream",
                        context.config.labelled_fraction)
            self.unlabelled = list(self.labelled)
        if options["patch_exchange"] and context.preprocess.size % int(options["patch_grid"]):
            raise MedistillError(f"--recipe-options patch_grid={options['patch_grid']} must divide "
                                 f"--img-size {context.preprocess.size}")
        self.student1 = self.build_student()
        self.student2 = self.build_student()  # same design; the initialiser draws new weights
        # The exported model: after each validation it receives the better student's weights.
        self.student = self.build_student()
        self.student.set_weights(self.student1.get_weights())
        self.heads = taps.head_names(self.student) or ["logits"]
        if self.heads == ["logits"]:
            log.warning("SSCD: student %s has no deep-supervision heads; the curriculum uses its "
                        "logits only (build it with deep_supervision=True)", context.config.student)
        self.views = [feature_model(model, self.heads) for model in (self.student1, self.student2)]
        epochs = context.config.epochs
        # curriculum false: the last stage (the finest head alone) from the first epoch
        stages = [stage_for_epoch(epoch, epochs) if options["curriculum"] else STAGES for epoch in range(epochs)]
        self.stage_table = tf.constant(stages, tf.float32)
        self.weight_table = tf.constant(
            [fold_weights(curriculum_weights(stage), len(self.heads)) for stage in stages], tf.float32)
        self.steps_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="sscd_steps",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.trainable = list(self.student1.trainable_variables) + list(self.student2.trainable_variables)
        self.optimizer = self.make_optimizer(self.trainable)
        log.info("SSCD: %d labelled and %d unlabelled training images; curriculum over heads %s; "
                 "stages by epoch %s", len(self.labelled), len(self.unlabelled), self.heads, stages)

    def trackables(self) -> dict[str, Any]:
        return {"student1": self.student1, "student2": self.student2, "sscd_steps": self.steps_done}

    def trained_models(self) -> list[keras.Model]:
        return [self.student1, self.student2]

    def candidates(self) -> list[keras.Model]:
        return [self.student1, self.student2]

    def min_epochs(self) -> int:
        # The exported (finest) head is trained only from stage 4 on: an early stop in the
        # coarse stages would end the run before the exported output has learnt anything.
        return int(self.context.config.epochs) if self.options["curriculum"] else 0

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "exported": "the student (1: weak view, 2: strong view) with the better "
                "validation Dice at the best epoch (history.csv: exported_candidate)", "curriculum_heads": self.heads}

    # -- data ------------------------------------------------------------------
    def stream(self) -> tf.data.Dataset:
        """Dicts ``x_l, xs_l, y_l`` (labelled weak/strong views, masks), ``x_u, xs_u`` (unlabelled
        weak/strong views; no mask at all) and ``box`` (one copy-paste box per pair)."""
        context, options = self.context, self.options
        seed, weak = context.config.seed, weak_augment(context.augment)
        labelled = repeated_batches(self.labelled, context, seed, augment=weak)
        unlabelled = repeated_batches(self.unlabelled, context, seed + 1, augment=weak,
                                      load_fn=image_only_loader).map(lambda x, _placeholder: x)
        height = width = context.preprocess.size
        strong = {name: float(options[name]) for name in ("jitter", "noise", "cutout")}

        def views(pair, x_u, step_seed):
            x_l, y_l = pair
            seeds = tf.random.experimental.stateless_split(step_seed, num=3)
            return {"x_l": x_l, "xs_l": strong_view(x_l, seeds[0], **strong), "y_l": y_l,
                    "x_u": x_u, "xs_u": strong_view(x_u, seeds[1], **strong),
                    "box": random_box_mask(tf.shape(x_l)[0], height, width, seeds[2],
                                           float(options["box_fraction"]))}

        zipped = tf.data.Dataset.zip(labelled, unlabelled, step_seeds(seed + 2))
        return zipped.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
            tf.data.AUTOTUNE)

    # -- one step --------------------------------------------------------------
    def pseudo_labels(self, images: tf.Tensor) -> tf.Tensor:
        """The frozen teacher's PV-gated labels ``(B, H, W)``, cleaned to the largest components."""
        probs = class_probabilities(self.context.teacher(images, training=False))
        labels = pv_gated_pseudo_labels(probs, float(self.options["pv_threshold"]),
                                        float(self.options["second_threshold"]))
        if self.options["largest_component"]:
            labels = largest_component_tf(labels, self.context.num_classes)
        return tf.stop_gradient(labels)

    def predict(self, index: int, images: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        """Student ``index``'s curriculum logits: its heads mixed with this stage's weights."""
        outputs = self.views[index](images, training=True)
        return curriculum_logits([outputs[name] for name in self.heads], weights)

    def step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss, report = self.losses(batch)
        self.apply_gradients(tape, loss)
        self.steps_done.assign_add(1)
        return report

    def mixed_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, Any]:
        """Copy-paste both ways, per view: images, labels (ground truth + pseudo), box weights.

        The first ``B`` mixed images hold a labelled box in an unlabelled image, the last
        ``B`` an unlabelled box in a labelled image.
        """
        x_l, y_l, box = batch["x_l"], batch["y_l"], batch["box"]
        size = tf.shape(x_l)[0]
        both = self.pseudo_labels(tf.concat([batch["x_u"], batch["xs_u"]], axis=0))
        pseudo = {"weak": both[:size], "strong": both[size:]}
        labelled = {"weak": x_l, "strong": batch["xs_l"]}
        unlabelled = {"weak": batch["x_u"], "strong": batch["xs_u"]}
        ones = tf.ones([size])
        pseudo_weight = float(self.options["pseudo_weight"]) * ones
        mixed = {"labelled": labelled, "boxes": tf.concat([box, box], axis=0),
                 "box_weight": tf.concat([ones, pseudo_weight], axis=0),
                 "rest_weight": tf.concat([pseudo_weight, ones], axis=0), "images": {}, "labels": {}}
        for view in VIEWS:
            lab, unl = labelled[view], unlabelled[view]
            mixed["images"][view] = tf.concat([paste(unl, lab, box), paste(lab, unl, box)], axis=0)
            mixed["labels"][view] = tf.concat([paste(pseudo[view], y_l, box), paste(y_l, pseudo[view], box)], axis=0)
        return mixed

    def losses(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """The step's loss (already divided by the global batch) and its reported terms.

        Each student makes two calls: (mixed images + its labelled view), then (``X̃`` + its
        labelled view masked by ``M_E``); ``M_E`` comes from the first call.
        """
        y_l, size = batch["y_l"], tf.shape(batch["y_l"])[0]
        epoch = tf.minimum(self.steps_done // self.context.steps_per_epoch, self.weight_table.shape[0] - 1)
        weights, stage = tf.gather(self.weight_table, epoch), tf.gather(self.stage_table, epoch)
        mixed = self.mixed_batch(batch)
        images, labelled = mixed["images"], mixed["labelled"]
        first = [self.predict(k, tf.concat([images[v], labelled[v]], axis=0), weights) for k, v in enumerate(VIEWS)]
        logits = [z[: 2 * size] for z in first]
        percentile = float(self.options["hard_percentile"])
        hard = [entropy_hard_mask(class_probabilities(z[2 * size:]), percentile) for z in first]
        exchanged = self.exchanged_images(images["weak"], images["strong"], logits)
        second = [self.predict(k, tf.concat([exchanged, labelled[v] * hard[k][..., None]], axis=0), weights)
                  for k, v in enumerate(VIEWS)]
        terms = []
        for k, view in enumerate(VIEWS):
            own = sscd_model_loss_per_example(
                mixed["labels"][view], logits[k], logits[1 - k], second[k][: 4 * size], second[1 - k][: 4 * size],
                mixed["boxes"], mixed["box_weight"], mixed["rest_weight"], size)
            own["hard"] = region_ce_dice_per_example(y_l, second[k][4 * size:], hard[k])
            terms.append(own)
        weight = float(self.options["hard_region_weight"])
        loss = self.average(sum(t["total"] + weight * t["hard"] for t in terms))
        regularisation = self.student1.losses + self.student2.losses
        if regularisation:
            loss += tf.nn.scale_regularization_loss(tf.add_n(regularisation))
        report = {"loss": loss, "stage": self.average(tf.fill([size], stage))}
        for name in ("mix", "cross", "exchange", "hard"):
            report[name] = self.average(terms[0][name] + terms[1][name])
        return loss, report

    def exchanged_images(self, weak: tf.Tensor, strong: tf.Tensor, logits: list[tf.Tensor]) -> tf.Tensor:
        """``X̃``: the weak and strong mixed images, after the hard-patch exchange if it is on."""
        if self.options["patch_exchange"]:
            confidence = [tf.reduce_max(class_probabilities(tf.stop_gradient(z)), axis=-1) for z in logits]
            weak, strong = hard_patch_exchange(weak, strong, confidence[0], confidence[1],
                                               int(self.options["patch_grid"]),
                                               int(self.options["exchanged_patches"]))
        return tf.concat([weak, strong], axis=0)


RECIPE = SSCD
