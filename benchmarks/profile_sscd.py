"""Where an SSCD training step spends its time, against a supervised step at the same batch.

Builds the SSCD recipe in this process (two students, a frozen teacher) on 4-class phantoms
(or ``--data``) and times, interleaved (A, B, C, … repeated), medians over ``--repeats``:
the supervised step of the same student, the whole SSCD step (defaults; without the
largest-component clean-up; with the hard-patch exchange), and its parts: one batch from
the SSCD data stream, the teacher's pseudo labels (with and without the clean-up), and one
student's forward + backward on the images it sees in a step.

    .venv/bin/python benchmarks/profile_sscd.py [--quick] [--img-size 64] [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from common import argument_parser, load_average, markdown_table, publish, time_runs

SECTION_KEY = "sscd-profile"
SECTION_TITLE = "SSCD step profile against a supervised step (same student, same batch)"
STUDENT = {"base_filters": 8, "deep_supervision": True}
TEACHER = {"base_filters": 16, "deep_supervision": True}


def build(data: Path, size: int, batch: int, options: dict):
    """An SSCD recipe (untrained teacher of the benchmark's design) and its first batch."""
    import tensorflow as tf

    from medistill.data import AugmentConfig
    from medistill.distill.config import DistillConfig
    from medistill.distill.recipes.base import RecipeContext
    from medistill.distill.recipes.sscd import SSCD
    from medistill.networks import build_student
    from medistill.train.data_setup import training_samples
    from medistill.train.supervised import preprocess_config

    config = DistillConfig(data=str(data), out=str(data.parent / "unused"), recipe="sscd", teacher_model="t",
                           student_options=STUDENT, img_size=size, epochs=10, batch=batch,
                           labelled_fraction=0.5, recipe_options=options)
    train, _ = training_samples(config.data, val_fraction=0.0, seed=0)
    teacher = build_student("unet", in_channels=1, num_classes=4, **TEACHER)
    teacher.trainable = False
    context = RecipeContext(config=config, num_classes=4, train_samples=train, preprocess=preprocess_config(config),
                            augment=AugmentConfig(), global_batch=batch, steps_per_epoch=10,
                            strategy=tf.distribute.get_strategy(), teacher=teacher)
    recipe = SSCD(context)
    recipe.build()
    return recipe


def supervised_step(size: int, batch: int):
    """The supervised trainer's step (deep supervision over the heads) on the same student design."""
    import keras
    import numpy as np
    import tensorflow as tf

    from medistill.losses.kamsd import deep_supervision_loss_per_example
    from medistill.networks import build_student, feature_model, head_names

    student = build_student("unet", in_channels=1, num_classes=4, **STUDENT)
    heads = head_names(student)
    forward = feature_model(student, heads)
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.build(student.trainable_variables)
    x = tf.constant(np.random.default_rng(0).random((batch, size, size, 1), "float32"))
    y = tf.constant(np.random.default_rng(1).integers(0, 4, (batch, size, size)).astype("int32"))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = forward(x, training=True)
            loss = tf.reduce_mean(deep_supervision_loss_per_example(y, [out[h] for h in heads], 4))
        grads = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(grads, student.trainable_variables))
        return loss

    return step


def parts(recipe, batch_data: dict):
    """Timed pieces of one SSCD step (each a ``tf.function``)."""
    import tensorflow as tf

    from medistill.losses.sscd import pv_gated_pseudo_labels
    from medistill.losses.cakd import class_probabilities

    unlabelled = tf.concat([batch_data["x_u"], batch_data["xs_u"]], axis=0)
    size = int(batch_data["x_l"].shape[0])
    student_images = tf.concat([unlabelled, batch_data["x_l"]], axis=0)  # 3B: a student's first call
    second_images = tf.concat([unlabelled, unlabelled, batch_data["x_l"]], axis=0)[: 5 * size]
    weights = tf.constant([0.0] * (len(recipe.heads) - 1) + [1.0])

    @tf.function
    def pseudo_with_cleanup():
        return recipe.pseudo_labels(unlabelled)

    @tf.function
    def pseudo_argmax_only():
        probs = class_probabilities(recipe.context.teacher(unlabelled, training=False))
        return pv_gated_pseudo_labels(probs)

    def student_pass(images):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(recipe.predict(0, images, weights))
            return tape.gradient(loss, recipe.student1.trainable_variables)
        return run

    return {"teacher pseudo labels (2B images) + largest component": pseudo_with_cleanup,
            "teacher pseudo labels (2B images), no clean-up": pseudo_argmax_only,
            "one student, first call (3B images), forward + backward": student_pass(student_images),
            "one student, second call (5B images), forward + backward": student_pass(second_images)}


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="images/ + masks/ (default: 24 4-class phantoms)")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.img_size, args.batch, args.repeats = 32, 2, 2
    import tensorflow as tf

    from medistill.data.phantoms import generate_phantoms

    with tempfile.TemporaryDirectory(prefix="medistill-profile-sscd-") as scratch:
        data = args.data
        if data is None:
            data = Path(scratch) / "phantoms"
            generate_phantoms(data, 24, size=args.img_size, seed=0, multiclass=True)
        variants = {"SSCD step (defaults)": {}, "SSCD step, no largest-component clean-up": {"largest_component": False},
                    "SSCD step, hard-patch exchange on": {"patch_exchange": True}}
        runs: dict[str, object] = {"supervised step (deep supervision)": supervised_step(args.img_size, args.batch)}
        first = None
        for name, options in variants.items():
            recipe = build(data, args.img_size, args.batch, options)
            stream = iter(recipe.train_dataset())
            batch_data = next(stream)
            step = tf.function(recipe.step)
            runs[name] = (lambda s=step, b=batch_data: s(b)["loss"].numpy())
            if first is None:
                first = recipe
                runs["SSCD data: one batch from the stream"] = lambda it=stream: next(it)
                runs.update({key: (lambda f=fn: tf.nest.map_structure(lambda t: t.numpy(), f()))
                             for key, fn in parts(recipe, batch_data).items()})
        for run in runs.values():  # trace and warm up every function first
            run()
            run()
        durations: dict[str, list[float]] = {name: [] for name in runs}
        loads = [load_average()]
        for _ in range(args.repeats):  # interleaved: A, B, C, ..., A, B, C, ...
            for name, run in runs.items():
                durations[name].extend(time_runs(run, 1).seconds)
        loads.append(load_average())
    supervised = statistics.median(durations["supervised step (deep supervision)"])
    rows = [[name, f"{statistics.median(values) * 1e3:.0f}", f"{min(values) * 1e3:.0f}",
             f"{statistics.median(values) / supervised:.1f}×"] for name, values in durations.items()]
    body = markdown_table(["what", "median ms", "min ms", "× supervised step"], rows)
    notes = (f"Student `unet` {STUDENT}, teacher `unet` {TEACHER} (untrained: the cost is the same), 4 classes, "
             f"{args.img_size} px, batch {args.batch} (SSCD: {args.batch} labelled + {args.batch} unlabelled per "
             f"step), CPU, one process; {args.repeats} interleaved repetitions after two warm-up calls each; "
             f"1-minute load {min(loads):.1f}–{max(loads):.1f}. The parts do not add up to the step exactly "
             "(the step also mixes images, computes the losses and applies the optimiser).\n\n"
             "Where the time goes: with B labelled and B unlabelled images, each of the two students runs forward "
             "and backward on 3B images (the 2B copy-paste mixed images of its view and its B labelled images, "
             "for the entropy mask) and then on 5B (the 4B images X̃, both views, and the B hard-region images): "
             "16B image passes per step against B for the supervised step, plus the teacher's forward pass on "
             "2B images. The students' passes are most of the step (the two call rows, ×2 students); the data "
             "stream and the largest-component clean-up are small. A step within 3× of a supervised one would "
             "need fewer than 3B student passes, i.e. another method (one student, no X̃ term), so the recipe "
             "keeps the method and the figures say what it costs.")
    publish(args, SECTION_KEY, SECTION_TITLE, body, notes)


if __name__ == "__main__":
    main()
