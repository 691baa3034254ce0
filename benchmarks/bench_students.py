"""Size and speed of every student in ``medistill.networks.STUDENTS`` (default options).

Per student (1 channel, binary): parameters and FLOPs (``model_summary``), training
images/s (a ``tf.function`` step with ``tf.GradientTape`` + Adam on random data, after
warm-up), inference images/s at batch 1 and batch 8, and single-image latency.

    .venv/bin/python benchmarks/bench_students.py [--quick]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import common  # noqa: F401  (sets the TensorFlow environment before it is imported)
from common import Timing, argument_parser, markdown_table, publish, time_runs

import keras
import numpy as np
import tensorflow as tf

from medistill.losses import segmentation_loss
from medistill.networks import STUDENTS, build_student, model_summary

SECTION_KEY = "students"
SECTION_TITLE = "Students: size, training and inference speed"


@dataclass(frozen=True)
class StudentSizes:
    """Image size, batches and step counts of one run.

    Timed steps (calls) stop after ``*_budget`` seconds once ``*_min`` were made, so the
    heaviest student (UNet++) keeps the run short while light ones get more samples.
    """

    size: int
    train_batch: int
    train_warmup: int
    train_min: int
    train_max: int
    train_budget: float
    infer_batches: tuple[int, ...]
    infer_warmup: int
    infer_min: int
    infer_max: int
    infer_budget: float


FULL = StudentSizes(size=256, train_batch=4, train_warmup=2, train_min=10, train_max=20, train_budget=45.0,
                    infer_batches=(1, 8), infer_warmup=2, infer_min=5, infer_max=30, infer_budget=15.0)
QUICK = StudentSizes(size=64, train_batch=2, train_warmup=1, train_min=2, train_max=2, train_budget=1.0,
                     infer_batches=(1, 2), infer_warmup=1, infer_min=2, infer_max=2, infer_budget=1.0)


@dataclass(frozen=True)
class StudentResult:
    """All figures of one student."""

    name: str
    params: int
    flops: int
    train: Timing
    inference: dict[int, Timing]


def random_batch(batch: int, size: int, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Images in [0, 1] and binary masks ``(batch, size, size)``."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch, size, size, 1), dtype=np.float32)
    masks = (rng.random((batch, size, size)) > 0.8).astype(np.int32)
    return tf.constant(images), tf.constant(masks)


def training_step(model: keras.Model) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """A compiled step: forward, BCE+Dice loss, gradients, Adam update."""
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(segmentation_loss(masks, model(images, training=True)))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return step


def measure_training(model: keras.Model, sizes: StudentSizes) -> Timing:
    """Seconds per training step, after warm-up."""
    step = training_step(model)
    images, masks = random_batch(sizes.train_batch, sizes.size)
    return time_runs(lambda: step(images, masks).numpy(), sizes.train_max, sizes.train_warmup,
                     sizes.train_min, sizes.train_budget)


def measure_inference(model: keras.Model, sizes: StudentSizes) -> dict[int, Timing]:
    """Seconds per forward pass (``training=False``) for each inference batch size."""
    @tf.function
    def forward(images: tf.Tensor) -> tf.Tensor:
        return model(images, training=False)

    timings = {}
    for batch in sizes.infer_batches:
        images, _ = random_batch(batch, sizes.size, seed=batch)
        timings[batch] = time_runs(lambda: forward(images).numpy(), sizes.infer_max, sizes.infer_warmup,
                                   sizes.infer_min, sizes.infer_budget)
    return timings


def measure_student(name: str, sizes: StudentSizes) -> StudentResult:
    """Build student ``name`` with default options and measure it."""
    keras.utils.set_random_seed(0)
    model = build_student(name, in_channels=1, num_classes=1)
    summary = model_summary(model, (sizes.size, sizes.size, 1))
    inference = measure_inference(model, sizes)
    train = measure_training(model, sizes)
    result = StudentResult(name, summary["params"], summary["flops"], train, inference)
    print(f"{name}: {summary['params']:,} params, train {train.rate(sizes.train_batch):.2f} img/s", flush=True)
    keras.backend.clear_session()
    return result


def results_table(results: list[StudentResult], sizes: StudentSizes) -> str:
    """One row per student."""
    small, large = sizes.infer_batches[0], sizes.infer_batches[-1]
    headers = ["student", "parameters", "GFLOPs / image", f"train img/s (batch {sizes.train_batch})",
               f"infer img/s (batch {small})", f"infer img/s (batch {large})",
               f"latency ms (batch {small}, median)", "timed steps / calls", "load (1 min) before → after"]
    rows = []
    for r in results:
        first_load = r.inference[small].load_before
        rows.append([f"`{r.name}`", f"{r.params:,}", f"{r.flops / 1e9:.2f}",
                     f"{r.train.rate(sizes.train_batch):.2f}",
                     f"{r.inference[small].rate(small):.2f}", f"{r.inference[large].rate(large):.2f}",
                     f"{r.inference[small].median * 1e3:.0f}",
                     " / ".join(str(len(t.seconds)) for t in (r.train, *r.inference.values())),
                     f"{first_load:.2f} → {r.train.load_after:.2f}"])
    return markdown_table(headers, rows)


def method_notes(sizes: StudentSizes) -> str:
    """How the figures were measured, for the RESULTS.md section."""
    small, large = sizes.infer_batches[0], sizes.infer_batches[-1]
    return (f"Default options of each student, 1 input channel, 1 sigmoid logit, "
            f"{sizes.size}×{sizes.size} px. Parameters count every weight (batch-norm statistics "
            "included); FLOPs = 2 × multiply-accumulates of convolutions and matrix products for "
            "one image. Training: `tf.function` step (forward, BCE+Dice loss, `tf.GradientTape`, "
            f"Adam) on a fixed random batch of {sizes.train_batch}; {sizes.train_warmup} warm-up steps, "
            f"then {sizes.train_min}–{sizes.train_max} timed steps (stopping once {sizes.train_budget:g} s "
            "were timed). Inference: `tf.function` forward with `training=False`; "
            f"{sizes.infer_warmup} warm-up calls, then {sizes.infer_min}–{sizes.infer_max} timed calls "
            f"per batch size (stopping once {sizes.infer_budget:g} s were timed). Latency is the median "
            f"time of one batch-{small} call. Float32 on CPU, TensorFlow's default thread pools. "
            f"\"timed steps / calls\" = training steps / batch-{small} calls / batch-{large} calls "
            "behind each figure.")


def main() -> None:
    """Run the benchmark and publish its section."""
    args = argument_parser(__doc__.splitlines()[0]).parse_args()
    sizes = QUICK if args.quick else FULL
    tf.get_logger().setLevel("ERROR")  # one retrace per batch size is expected, not a warning
    results = [measure_student(name, sizes) for name in STUDENTS]
    publish(args, SECTION_KEY, SECTION_TITLE, results_table(results, sizes), method_notes(sizes))


if __name__ == "__main__":
    main()
