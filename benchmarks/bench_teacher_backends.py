"""Teacher backends: LiteMedSAM's encoder and decoder in Keras, ONNX Runtime and OpenVINO, and the cache build.

Run as ``bench_teachers.py --backends`` (its own RESULTS.md section). In one run:

1. the fp32 matrix-multiply peak (TensorFlow, 2048³, median of 3), measured between the
   timings so it sees the same load;
2. encoder seconds/image per backend, precision and batch size, and decoder ms/box
   (16 boxes in one call), interleaved: every round times each variant once, in turn,
   and the medians over the rounds are reported with % of the matmul peak (75.0 GFLOP
   per image);
3. agreement with the Keras path on nuclei tiles (max low-resolution logit difference,
   share of agreeing mask pixels) and the teacher Dice against the ground truth;
4. ``medistill teach`` cache builds of the same nuclei tiles: the Keras path as it was
   (batch 1, in-process), the default backend with 1 worker and with ``--workers 2``,
   images/s and MB per image of the cache (interleaved runs are too long here: one
   build each, load shown).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO_ROOT, load_average, markdown_table

from medistill.boxes.components import mask_to_boxes
from medistill.data.sources import read_nuclei

ENCODER_GFLOP = 75.0
BOXES = 16
VARIANTS = (("keras", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))


def matmul_gflops(size: int = 2048, repeats: int = 3) -> float:
    import tensorflow as tf

    a = tf.random.normal((size, size))
    tf.linalg.matmul(a, a).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.linalg.matmul(a, a).numpy()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def _tiles(count: int):
    examples = read_nuclei(tile=128).examples[:count]
    return [(e.stem, e.image, e.mask > 0, np.array([[b.x1, b.y1, b.x2, b.y2] for b in mask_to_boxes(e.mask > 0)],
                                                    np.float32)) for e in examples]


def _dice(a, b) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def timing_table(teachers: dict, tiles: list, rounds: int, batches: tuple[int, ...]) -> tuple[str, float]:
    xs = np.stack([teachers[VARIANTS[0]].encoder_input(image)[0] for _, image, _, _ in tiles])
    boxes = np.tile(np.array([[8, 8, 120, 120]], np.float32), (BOXES, 1))
    encoder = {(v, b): [] for v in teachers for b in batches}
    decoder = {v: [] for v in teachers}
    peaks = []
    for variant, teacher in teachers.items():  # warm-up: tracing, first calls
        teacher.encode_many(xs[:1])
        teacher.decode(teacher.encode(xs[0]), boxes)
    for _ in range(rounds):
        peaks.append(matmul_gflops())
        for variant, teacher in teachers.items():
            for batch in batches:
                start = time.perf_counter()
                embeddings = teacher.encode_many(xs[:batch])
                encoder[(variant, batch)].append((time.perf_counter() - start) / batch)
            start = time.perf_counter()
            teacher.decode(embeddings[0], boxes)
            decoder[variant].append((time.perf_counter() - start) / BOXES)
    peak = statistics.median(peaks)
    keras = statistics.median(encoder[(VARIANTS[0], 1)])
    rows = []
    for (variant, batch), values in encoder.items():
        seconds = statistics.median(values)
        rows.append([f"{variant[0]} {variant[1]}", batch, f"{seconds:.3f}", f"{keras / seconds:.2f}×",
                     f"{100 * ENCODER_GFLOP / seconds / peak:.0f} %",
                     f"{1000 * statistics.median(decoder[variant]):.1f}" if batch == batches[0] else ""])
    table = markdown_table(["backend", "encoder batch", "encoder s/image", "vs Keras batch 1", "% of matmul peak",
                            "decoder ms/box"], rows)
    return table, peak


def parity_table(teachers: dict, tiles: list) -> tuple[str, dict]:
    outputs = {v: [t.predict(image, boxes) for _, image, _, boxes in tiles] for v, t in teachers.items()}
    reference = outputs[VARIANTS[0]]
    rows, dice = [], {}
    for variant, outs in outputs.items():
        logits = max(float(np.abs(o.extras["low_res_logits"] - r.extras["low_res_logits"]).max())
                     for o, r in zip(outs, reference))
        agree = float(np.mean(np.concatenate([((o.masks > .5) == (r.masks > .5)).ravel()
                                              for o, r in zip(outs, reference)])))
        dice[variant] = float(np.mean([_dice(o.fused() > .5, truth) for o, (_, _, truth, _) in zip(outs, tiles)]))
        rows.append([f"{variant[0]} {variant[1]}", f"{logits:.2e}", f"{100 * agree:.3f} %", f"{dice[variant]:.4f}",
                     f"{dice[variant] - dice[VARIANTS[0]]:+.4f}"])
    return markdown_table(["backend", "max logit diff vs Keras", "mask pixels agreeing", "teacher Dice",
                           "Dice change"], rows), dice


def _write_set(tiles: list, folder: Path) -> Path:
    from medistill.boxes.boxes_file import write_boxes
    from medistill.boxes.oracle import boxes_from_masks
    from medistill.data.phantoms import write_png

    for stem, image, truth, _ in tiles:
        write_png(folder / "images" / f"{stem}.png", image)
        write_png(folder / "masks" / f"{stem}.png", (truth * 255).astype(np.uint8))
    write_boxes(folder / "boxes.json", boxes_from_masks(folder / "masks", folder / "images"))
    return folder / "boxes.json"


def cache_table(tiles: list, default_backend: str) -> str:
    rows = []
    with tempfile.TemporaryDirectory(prefix="medistill-bench-backends-") as work:
        boxes = _write_set(tiles, Path(work))
        runs = [("Keras, batch 1, full features (before)",
                 ["--teacher-backend", "keras", "--teacher-batch", "1", "--cache-features", "full"]),
                (f"default ({default_backend}), 1 worker", []),
                (f"default ({default_backend}), 2 workers", ["--workers", "2"])]
        for index, (name, extra) in enumerate(runs):
            out = Path(work) / f"cache{index}.h5"
            command = [sys.executable, "-m", "medistill", "teach", "--image_dir", str(Path(work) / "images"),
                       "--boxes", str(boxes), "--teacher", "litemedsam", "--out", str(out), "--no-progress", *extra]
            load = load_average()
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ})
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            summary = json.loads(done.stdout.strip().splitlines()[-1])
            megabytes = out.stat().st_size / 1e6 / len(tiles)
            rows.append([name, summary["images"], f"{summary['seconds']:.1f}", f"{summary['images_per_second']:.3f}",
                         f"{megabytes:.2f}", f"{load:.2f} → {load_average():.2f}"])
    return markdown_table(["cache build", "images", "seconds (build, tracing included)", "images/s", "MB/image",
                           "load"], rows)


def run_backends(quick: bool) -> tuple[str, str]:
    """The section body and notes."""
    from medistill.teachers.litemedsam.backends import DEFAULT_BACKEND
    from medistill.teachers.registry import TeacherRuntime, build_teacher

    tiles = _tiles(2 if quick else 6)
    rounds, batches = (1, (1,)) if quick else (3, (1, 2))
    teachers = {v: build_teacher("litemedsam", TeacherRuntime(backend=v[0], precision=v[1], encode_batch=1))
                for v in VARIANTS}
    timing, peak = timing_table(teachers, tiles, rounds, batches)
    parity, _ = parity_table(teachers, tiles)
    del teachers
    cache = cache_table(tiles[: 2 if quick else 6], DEFAULT_BACKEND)
    notes = f"""Encoder/decoder: {rounds} interleaved round(s) over the variants, medians;
the encoder on the first `batch` of {len(tiles)} nuclei tiles (128 px → 256), the decoder on {BOXES}
boxes in one call. fp32 matmul peak (TensorFlow, 2048³) in the same run: {peak:.0f} GFLOP/s.
Parity and Dice: {len(tiles)} nuclei tiles, ground-truth boxes (one per nucleus), fused mask > 0.5.
Cache: `medistill teach` in a fresh process per build (build time: tracing included, model load not;
exports made beforehand), {len(tiles)} tiles, 3 jittered stability draws per box (the default).
The default backend is `{DEFAULT_BACKEND}` (`medistill/teachers/litemedsam/backends.py`)."""
    return timing + "\n\n" + parity + "\n\n" + cache, notes
