"""The MedDistill trainer: a student learns a foundation model's box-prompted soft masks.

No ground-truth mask is used. Per image the student sees its preprocessed image and
learns, from the teacher (cached once, or called at every step with ``--live-teacher``):

- mask level: ``L_bce = BCE(z, S)`` (soft targets, by default weighted per pixel by the
  teacher's confidence ``|2S − 1|``), ``L_prob = MSE(σ(z), S)`` and ``L_dice`` (soft Dice per
  image, so small targets count); box level: ``L_proj`` (the student's mask projected
  onto each box's rows and columns fills them) and ``L_outside`` (background outside
  every box); see :mod:`medistill.distill.meddistill.distiller` and
  docs/label_free_losses.md. ``--terms`` chooses them (default bce, dice, proj, outside, feat);
- feature level (when the teacher has features): ``L_feat = MSE(P(F_s), resize(F_t))``
  (or ``1 − cos``), ``F_s`` a named student feature map, ``P`` a learned 1×1 projection
  (:class:`~medistill.distill.projection.FeatureProjection`). The default layer is the
  student feature whose stride (input pixels per feature pixel) is closest to the
  teacher's feature stride (LiteMedSAM: 4), a decoder feature before an encoder one at
  equal stride (it has seen the whole encoder, as the ViT embedding has seen the whole
  image). :func:`choose_feature_layer` says which; ``--feature-layer`` overrides it;
- the weighting (``learned``: Kendall's homoscedastic-uncertainty weighting, the default;
  ``ulwr``: the released per-image rule from σ²; ``fixed``) combines them. Every term and
  every weight is logged per epoch (``history.csv``, TensorBoard).

Each training image has a trust weight (:mod:`medistill.distill.meddistill.trust`): the
negatives rule for images without a box and the pseudo-label quality control. Small
sets repeat within an epoch (``--min-steps-per-epoch``); early stopping waits for
``--min-epochs`` (default half the epochs: the student learns the background first and
finds the targets late); a student that predicts nothing where the teacher finds
something is reported as collapsed (:mod:`medistill.distill.meddistill.collapse`).

``--co-learn`` fine-tunes LiteMedSAM's mask decoder on its cached embeddings with
:func:`~medistill.distill.colearn.colearn_loss_per_example` (its own Adam,
``--decoder-lr``); every ``--refresh-every`` K epochs, at the start of epochs K, 2K, …,
the training targets ``S`` and σ² are recomputed from the updated decoder (padding set
to 0 as in the cached targets). The refreshed targets are variables of the checkpoint,
so a resumed run continues with exactly the targets it had. Validation keeps the
original teacher's masks, so ``val_dice`` means the same thing at every epoch.

Validation needs no ground truth: ``val_dice`` is the agreement Dice of the student's
and the teacher's masks (thresholded at 0.5) on held-out images; it selects the best
epoch and stops early. Multi-replica runs synchronise batch-norm statistics
(``--sync-batchnorm``, on by default), so they compute what one device computes on the
same global batch.

Example::

    config = MedDistillConfig(image_dir="data/images", boxes="boxes.json", out="runs/md",
                              teacher="litemedsam", img_size=256)
    train_meddistill(config)          # RUN/student.keras, saved_model/, history.csv, …
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from medistill.distill.meddistill import data as md
from medistill.distill.meddistill.collapse import check_collapse
from medistill.distill.meddistill.config import MedDistillConfig
from medistill.distill.meddistill.distiller import (  # noqa: F401  (flip_like_batch, StepOutput: public here too)
    MedDistiller,
    StepOutput,
    flip_like_batch,
    make_step,
    make_validation,
)
from medistill.distill.meddistill.noise_floor import teacher_component_floor
from medistill.distill.meddistill.plots import plot_distillation
from medistill.distill.meddistill.targets import Prepared, prepare_data
from medistill.distill.meddistill.trust import assign_trust, quality_weights
from medistill.train.precision import full_precision, wrap_optimizer
from medistill.distill.projection import FeatureProjection
from medistill.train.method import EpochPlan, TrainingMethod, run_training
from medistill.train.session import RunSession
from medistill.train.schedules import learning_rate
from medistill.distill.weighting import build_weighting
from medistill.errors import MedistillError
from medistill.export import ModelCard
from medistill.networks import build_student, feature_model, feature_names
from medistill.train.loop import TrainingLoop

log = logging.getLogger("medistill.distill")

# At equal stride, which kind of student feature is preferred as the default.
_LAYER_PREFERENCE = ("dec", "bottleneck", "enc", "penultimate")


# --------------------------------------------------------------------------- feature layer


def feature_strides(student: keras.Model, size: int) -> dict[str, tuple[int, int]]:
    """``{name: (stride, channels)}`` of the student's documented features at input ``size``."""
    names = [n for n in feature_names(student) if not n.startswith("aux")]
    channels = int(student.inputs[0].shape[-1])
    outputs = feature_model(student, names)(np.zeros((1, size, size, channels), np.float32), training=False)
    return {n: (size // int(outputs[n].shape[1]), int(outputs[n].shape[-1])) for n in names}


def choose_feature_layer(strides: dict[str, tuple[int, int]], teacher_stride: int) -> str:
    """The feature whose stride is closest (in octaves) to ``teacher_stride``; dec > bottleneck > enc."""
    def rank(name: str) -> tuple[float, int, str]:
        kind = next(k for k in _LAYER_PREFERENCE if name.startswith(k))
        distance = abs(math.log2(strides[name][0]) - math.log2(max(teacher_stride, 1)))
        return distance, _LAYER_PREFERENCE.index(kind), name

    return min(strides, key=rank)


# --------------------------------------------------------------------------- co-learn targets


class RefreshedTargets(tf.Module):
    """The co-learn training targets as checkpoint variables, mirrored into ``data``'s arrays."""

    def __init__(self, data: md.DistillData) -> None:
        super().__init__(name="colearn_targets")
        self.data = data
        self.soft = tf.Variable(data.soft, trainable=False, name="soft")
        self.uncertainty = tf.Variable(data.uncertainty, trainable=False, name="uncertainty")
        self.synced = False

    def sync_from_checkpoint(self) -> None:
        """Copy the (possibly restored) variables into the arrays the data set reads."""
        self.data.soft[...] = self.soft.numpy()
        self.data.uncertainty[...] = self.uncertainty.numpy()
        self.synced = True

    def refresh(self, decoder: Any, size: int) -> None:
        from medistill.distill.colearn import refresh_targets

        extents = np.array([(g.resized_height, g.resized_width) for g in self.data.geometries])
        soft, sigma2 = refresh_targets(decoder, self.data.embeddings, self.data.boxes, self.data.valid,
                                       out_size=size, extents=extents)
        soft *= self.data.content_mask()  # zero padding, like the cached targets
        self.soft.assign(soft)
        self.uncertainty.assign(sigma2)
        self.sync_from_checkpoint()


# --------------------------------------------------------------------------- setting up


def require_resumable(config: MedDistillConfig) -> None:
    """``--resume``: refuse when ``RUN`` holds no checkpoint to resume."""
    if config.overwrite:
        raise MedistillError("--resume and --overwrite contradict each other; drop one")
    if tf.train.latest_checkpoint(str(Path(config.out) / "checkpoints")) is None:
        raise MedistillError(f"--resume: {config.out} holds no checkpoint to resume; run without --resume "
                             "to start a new run there")


# --------------------------------------------------------------------------- the run


def train_meddistill(config: MedDistillConfig, *, require_resume: bool = False) -> Path:
    """Distil, resume when ``config.out`` holds a compatible run, export; return the run folder."""
    if require_resume:
        require_resumable(config)
    return run_training(MedDistillTraining(config))


def build_distiller(config: MedDistillConfig, session: RunSession, student: keras.Model, decoder: Any,
                    chosen: dict, features: md.FeatureInfo | None, policy: str, steps_per_epoch: int):
    """The distiller (projection, weighting) and its optimizers, built in the strategy's scope."""
    # Building or calling a teacher draws random numbers (tiny-sam even reseeds), and only
    # the chief may build one: reseed so every worker and every resume starts the same.
    keras.utils.set_random_seed(config.seed + 1)
    with session.scope():
        projection = None
        if chosen and "feat" in config.terms:
            grid = config.img_size // chosen["stride"]
            projection = FeatureProjection(features.channels, name="feature_projection")
            projection.build((None, grid, grid, chosen["channels"]))
        term_names = [t for t in config.terms if t != "feat" or chosen]
        weighting = build_weighting(config.weighting, term_names, config.fixed_weights)
        distiller = MedDistiller(student, weighting, feature_layer=chosen.get("layer"), projection=projection,
                                 feature_loss=config.feature_loss, decoder=decoder,
                                 colearn_confidence=config.colearn_confidence, terms=term_names,
                                 confidence=config.confidence)
        rate = learning_rate(config.lr, config.schedule, config.epochs * steps_per_epoch)
        optimizer = wrap_optimizer(keras.optimizers.Adam(rate), policy)
        optimizer.build(distiller.trainable_variables)
        decoder_optimizer = None
        if decoder is not None:
            decoder_optimizer = keras.optimizers.Adam(config.decoder_lr)
            decoder_optimizer.build(decoder.trainable_variables)
    return distiller, optimizer, decoder_optimizer


def run_summary(config: MedDistillConfig, prepared: Prepared, chosen: dict, policy: str, **numbers: Any) -> dict:
    """What ``summary.json`` records about a run besides the loop's own numbers."""
    features = prepared.features
    return {
        "teacher": config.teacher, "cache": None if config.live_teacher else str(config.cache_path()),
        "live_teacher": config.live_teacher, "train_images": len(prepared.train),
        "negatives": prepared.train.negatives, "val_images": 0 if prepared.val is None else len(prepared.val),
        "weighting": config.weighting, "terms": list(config.terms), "confidence": config.confidence,
        "feature_layer": chosen.get("layer"), "feature_stride": chosen.get("stride"),
        "teacher_feature_shape": list(features.shape) if features else None,
        "teacher_feature_stride": features.stride if features else None, "co_learn": config.co_learn,
        "precision": policy, "preprocess": config.preprocess().to_dict(),
        "teacher_calls": prepared.live.calls if prepared.live else None, "cache_build": prepared.cache,
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in numbers.items()},
    }


class MedDistillTraining(TrainingMethod):
    """MedDistill on the trainer skeleton (:func:`~medistill.train.method.run_training`); see the module docstring."""

    config_cls = MedDistillConfig
    keras_name = "student.keras"

    def check_inputs(self) -> None:
        from medistill.boxes.boxes_file import check_image_paths, read_boxes

        check_image_paths(read_boxes(self.config.boxes), self.config.image_dir)
        check_cache_storage(self.config)

    def prepare(self, session: RunSession) -> int:
        """The teacher's targets (cache or live), the student (its features fix the target grid), trust."""
        config = self.config
        self.started = time.perf_counter()
        teacher = self.decoder = None
        if config.co_learn:  # LiteMedSAM, its variables mirrored: its mask decoder trains
            from medistill.distill.colearn import DecoderTeacher
            from medistill.teachers.registry import build_teacher

            with full_precision(), session.scope():
                teacher = build_teacher(config.teacher, config.runtime())  # as config.json says
                self.decoder = DecoderTeacher(teacher.model)
        keras.utils.set_random_seed(config.seed)  # same seed, same initial weights
        with session.scope():
            self.student = build_student(config.student, in_channels=config.channels, num_classes=1,
                                         **config.student_options)
        if config.init_from:
            load_initial_weights(self.student, config.init_from)
        strides = feature_strides(self.student, config.img_size)
        self.chosen: dict[str, Any] = {}
        self.prepared = prepare_data(config, session, lambda info: self._grid_for(info, strides), teacher)
        train = self.prepared.train
        quality_weight, quality = None, None
        if config.quality_control and not config.live_teacher:  # live targets have no quality records
            quality_weight, quality = quality_weights(config.cache_path(), train.stems, config.image_dir,
                                                      session.run_dir if session.chief else None)
        self.trust = assign_trust(train, config.negatives, self.prepared.source, quality_weight)
        self.trust["quality_control"] = quality
        return len(train)

    def _grid_for(self, info: md.FeatureInfo | None, strides: dict[str, tuple[int, int]]) -> int | None:
        """The student feature grid matched to the teacher's features (None: no feature term)."""
        config = self.config
        if info is None:
            log.info("the teacher has no features: no feature term")
            return None
        layer = config.feature_layer or choose_feature_layer(strides, info.stride)
        if layer not in strides:
            raise MedistillError(f"--feature-layer {layer!r} is not a feature of {config.student}; "
                                 f"choose one of {', '.join(strides)}")
        self.chosen.update(layer=layer, stride=strides[layer][0], channels=strides[layer][1])
        log.info("feature term: student %s (stride %d, %d channels) against the teacher's %s features "
                 "(stride %d), projected by a 1x1 convolution", layer, strides[layer][0], strides[layer][1],
                 "x".join(map(str, info.shape)), info.stride)
        return config.img_size // strides[layer][0]

    def build(self, session: RunSession, plan: EpochPlan) -> None:
        config, prepared = self.config, self.prepared
        self.plan = plan
        self.setup_seconds = time.perf_counter() - self.started
        log.info("data: %d training image(s) (%d negative), %d validation image(s)", len(prepared.train),
                 prepared.train.negatives, 0 if prepared.val is None else len(prepared.val))
        grid = config.img_size // self.chosen["stride"] if self.chosen else None
        self.feature_shape = (grid, grid, prepared.features.channels) if self.chosen else None
        self.distiller, self.optimizer, decoder_optimizer = build_distiller(
            config, session, self.student, self.decoder, self.chosen, prepared.features, plan.policy, plan.steps)
        self._trackables: dict[str, Any] = {"weighting": self.distiller.weighting}
        if self.distiller.projection is not None:
            self._trackables["projection"] = self.distiller.projection
        self.targets = None
        if self.decoder is not None:
            self.targets = RefreshedTargets(prepared.train)
            self._trackables.update(self.decoder.trackables(), decoder_optimizer=decoder_optimizer,
                                    colearn_targets=self.targets)
        self.step = make_step(self.distiller, self.optimizer, plan.batch, decoder_optimizer)
        self.train_started = time.perf_counter()

    def epoch_data(self, epoch: int) -> tf.data.Dataset:
        config, targets = self.config, self.targets
        if targets is not None:
            if not targets.synced:
                targets.sync_from_checkpoint()
            if epoch > 0 and epoch % config.refresh_every == 0:
                log.info("co-learn: refreshing the training targets from the updated decoder (epoch %d)", epoch + 1)
                targets.refresh(self.decoder, config.img_size)
        return md.training_dataset(self.prepared.train, self.plan.batch, epoch, config.seed, config.augment,
                                   feature_shape=self.feature_shape, live=self.prepared.live,
                                   passes=self.plan.passes)

    def validation(self):
        return make_validation(self.student, self.prepared.val, self.plan.batch)

    def trackables(self) -> dict[str, Any]:
        return self._trackables

    def trained_models(self) -> list[keras.Model]:
        return [self.student] if self.config.sync_batchnorm else []

    def min_epochs(self) -> int:
        return self.config.early_stop_floor()

    def after_fit(self, session: RunSession, loop: TrainingLoop, history: list[dict]) -> None:
        self.train_seconds = time.perf_counter() - self.train_started
        if session.chief and history:
            plot_distillation(history, session.run_dir / "loss_terms.png")
        val = self.prepared.val
        self.collapse = check_collapse(self.student, val if val is not None else self.prepared.train, history,
                                       self.plan.batch, loop.settings.monitor)
        if self.collapse["collapsed"]:
            log.error("the student collapsed: %s. Try more epochs (--epochs, --min-epochs), the default loss "
                      "terms (--terms) or a higher --lr; --keep-collapsed keeps it anyway", self.collapse["reason"])

    def card(self) -> ModelCard:
        return ModelCard(self.config.preprocess(), 2, min_component=self.noise_floor["min_component"])

    @functools.cached_property
    def noise_floor(self) -> dict[str, Any]:
        """The card's noise floor from the teacher's training masks (:mod:`.noise_floor`), computed once."""
        train = self.prepared.train
        content = [(g.resized_height, g.resized_width) for g in train.geometries]
        floor = teacher_component_floor(train.soft, content, self.config.noise_floor)
        return {"factor": self.config.noise_floor, "min_component": floor}

    def summary(self) -> dict[str, Any]:
        return run_summary(self.config, self.prepared, self.chosen, self.plan.policy,
                           setup_seconds=self.setup_seconds, train_seconds=self.train_seconds, trust=self.trust,
                           collapse=self.collapse, noise_floor=self.noise_floor)


def check_cache_storage(config: MedDistillConfig) -> None:
    """Refuse, before the run folder is touched, an existing cache whose storage cannot serve the run."""
    from medistill.teachers.cache import CacheReader
    from medistill.teachers.cache_storage import serves

    path = config.cache_path()
    if not path.is_file():
        return
    try:
        with CacheReader(path) as cache:
            stored = cache.storage
    except MedistillError:
        return  # not a readable cache: building it says why
    if not serves(stored, config.cache_storage()):
        raise MedistillError(f"{path} stores {stored} features, this run needs {config.cache_storage()} ones"
                             + (" (--co-learn feeds the cached embedding to the teacher's decoder)"
                                if config.co_learn else "")
                             + ": rebuild it with `medistill teach --cache-features full --overwrite`, "
                             "or give another --cache")


def load_initial_weights(student: keras.Model, source: str) -> None:
    """Initialise ``student`` from a run folder's (or a file's) ``student.keras`` (``--init-from``)."""
    path = Path(source)
    if path.is_dir():
        path = path / "student.keras"
    if not path.is_file():
        raise MedistillError(f"--init-from {source}: no student.keras there; give a MedDistill run folder "
                             "or its student.keras")
    try:
        trained = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        student.set_weights(trained.get_weights())
    except (ValueError, OSError) as error:
        raise MedistillError(f"--init-from {path}: cannot use its weights for this student ({error}); "
                             "the student and --student-options must match that run's") from error
    log.info("student initialised from %s", path)

