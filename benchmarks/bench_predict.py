"""``medistill predict`` on every backend: latency, throughput, cold start, parity, flips and post-processing.

Per student (``unet`` with 16 base filters, the default; ``lcovnet`` and ``unetpp`` with
their defaults) and input size (128², 256²), each backend (Keras, ONNX Runtime, OpenVINO,
LiteRT; OpenVINO also in bf16, ``--precision bf16``) runs the same :class:`medistill.export.Predictor` path (preprocessing, forward,
activation, restore): batch-1 latency of ``predict(image)`` and batch-16 throughput of
``predict_probabilities(predictor, 16 images, batch=16)``, the backends interleaved call by
call (A, B, C, D, A, B, …) with a pause of ``settle`` seconds before each timed call (the
runtimes' thread pools spin for a while after a call and would otherwise slow whichever
runtime comes next: measured, up to 2× on a 6 ms call), medians. Cold start: a fresh ``python -m medistill predict``
process on one image, from its start until the mask file exists, the backends
interleaved, medians. Speed does not depend on the weights, so the students are built
from scratch, except the default one at 128², which is trained briefly on real nuclei
tiles so that the parity and Dice figures mean something.

    .venv/bin/python benchmarks/bench_predict.py [--quick] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import common  # noqa: F401  (sets the TensorFlow environment before it is imported)
from common import REPO_ROOT, argument_parser, load_average, markdown_table, publish

import numpy as np

from medistill.data.io import write_image_png
from medistill.data.preprocess import PreprocessConfig, preprocess_image, preprocess_mask
from medistill.data.sources import read_nuclei
from medistill.export import ModelCard, load_predictor, save_model_artifacts
from medistill.predict.backends import BACKENDS, FORMATS, open_predictor
from medistill.runtimes import LOWER_PRECISION_BACKENDS, PRECISIONS
from medistill.predict.engine import predict_probabilities
from medistill.predict.exporter import export_model
from medistill.predict.postprocess import clean_labels

SECTION_KEY = "predict"
SECTION_TITLE = "Using the student: `medistill predict` backends (latency, throughput, cold start, parity)"
STUDENT_OPTIONS = {"unet": {"base_filters": 16}, "lcovnet": {}, "unetpp": {}}
DEFAULT_STUDENT = "unet"
# What is timed: every backend in fp32, and each lower precision a backend offers (`openvino-bf16`:
# `medistill predict --backend openvino --precision bf16`).
RUNTIMES = {backend if precision == "fp32" else f"{backend}-{precision}": (backend, precision)
            for backend in BACKENDS for precision in PRECISIONS
            if precision == "fp32" or backend in LOWER_PRECISION_BACKENDS}
# Share of mask pixels that may differ from Keras' masks (README, "Use your model").
MASK_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-3}


def open_runtime(run: Path, name: str):
    """The predictor of one entry of :data:`RUNTIMES`."""
    backend, precision = RUNTIMES[name]
    return open_predictor(run, backend, precision)


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one run; rounds stop after ``budget`` s once ``min_rounds`` ran."""

    sizes: tuple[int, ...]
    warmup: int
    latency_rounds: tuple[int, int]
    throughput_rounds: tuple[int, int]
    budget: float
    cold_rounds: int
    train_epochs: int
    tile: int
    settle: float = 0.05


FULL = Settings(sizes=(128, 256), warmup=2, latency_rounds=(21, 41), throughput_rounds=(3, 7), budget=40.0,
                cold_rounds=5, train_epochs=40, tile=128)
QUICK = Settings(sizes=(64,), warmup=1, latency_rounds=(2, 2), throughput_rounds=(1, 1), budget=1.0,
                 cold_rounds=1, train_epochs=2, tile=64, settle=0.0)


def interleaved(calls: dict[str, Callable[[], object]], rounds: tuple[int, int], budget: float,
                warmup: int, settle: float = 0.0) -> tuple[dict[str, list[float]], str]:
    """Time each call once per round, in turn, ``settle`` s after the previous one; ``(seconds per call name,
    load before → after)``."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    before, started = load_average(), time.perf_counter()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    least, most = rounds
    for index in range(most):
        for name, call in calls.items():
            time.sleep(settle)
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
        if index + 1 >= least and time.perf_counter() - started >= budget:
            break
    return seconds, f"{before:.2f} → {load_average():.2f}"


def train_default(run: Path, size: int, tiles: list, epochs: int) -> None:
    """The default student trained on the top rows of nuclei tiles (BCE, Adam), saved as a run folder."""
    import keras

    from medistill.networks import build_student

    keras.utils.set_random_seed(0)
    config = PreprocessConfig(size=size)
    xs, ys = [], []
    for tile in tiles:
        x, geometry = preprocess_image(tile.image[..., None].astype(np.float32), config)
        xs.append(x)
        ys.append(preprocess_mask(tile.mask > 0, geometry)[..., None].astype(np.float32))
    model = build_student(DEFAULT_STUDENT, in_channels=1, num_classes=1, **STUDENT_OPTIONS[DEFAULT_STUDENT])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(np.stack(xs), np.stack(ys), batch_size=4, epochs=epochs, verbose=0)
    save_model_artifacts(model, run, ModelCard(config, 2))


def untrained(run: Path, student: str, size: int) -> None:
    import keras

    from medistill.networks import build_student

    keras.utils.set_random_seed(0)
    model = build_student(student, in_channels=1, num_classes=1, **STUDENT_OPTIONS[student])
    save_model_artifacts(model, run, ModelCard(PreprocessConfig(size=size), 2))


def cold_start(run: Path, runtime: str, image_dir: Path, out: Path) -> float:
    """Seconds from starting ``medistill predict`` on one image until its mask exists."""
    backend, precision = RUNTIMES[runtime]
    command = [sys.executable, "-m", "medistill", "predict", "--model", str(run), "--backend", backend,
               "--precision", precision, "-i", str(image_dir), "-o", str(out)]
    mask = out / f"{next(image_dir.iterdir()).stem}.png"
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not mask.exists() and process.poll() is None:
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    _, err = process.communicate()
    if process.returncode != 0 or not mask.exists():
        raise RuntimeError(f"{' '.join(command)} failed:\n{err.decode()[-2000:]}")
    return seconds


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def quality_rows(run: Path, test_tiles: list) -> tuple[list[list[str]], dict[str, float]]:
    """Per runtime: largest probability difference and differing mask pixels vs Keras, Dice; flips, cleaning.
    Also ``{runtime: share of mask pixels that differ from Keras'}``."""
    images = [t.image[..., None].astype(np.float32) for t in test_tiles]
    truths = [t.mask > 0 for t in test_tiles]
    predictors = {name: open_runtime(run, name) for name in RUNTIMES}
    reference = predict_probabilities(predictors["keras"], images)
    rows, differing_share = [], {}
    pixels = sum(r.shape[0] * r.shape[1] for r in reference)
    variants = [("plain", False, {}), ("--tta", True, {}), ("--min-size 20", False, {"min_size": 20}),
                ("--largest-component", False, {"largest_component": True})]
    for backend, predictor in predictors.items():
        for name, tta, cleaning in variants:
            if backend != "onnxruntime" and name != "plain":
                continue  # the flips and the cleaning are backend-independent: shown once
            probs = predict_probabilities(predictor, images, tta=tta)
            masks = [clean_labels(predictor.labels(p), **cleaning) > 0 for p in probs]
            worst = max(float(np.abs(p - r).max()) for p, r in zip(probs, reference)) if name == "plain" else None
            differing = sum(int((m != (r > 0.5)).sum()) for m, r in zip(masks, reference)) if name == "plain" else None
            scores = [dice(m, t) for m, t in zip(masks, truths)]
            if differing is not None:
                differing_share[backend] = differing / pixels
            rows.append([f"`{backend}`", name, "–" if worst is None else f"{worst:.1e}",
                         "–" if differing is None else f"{differing} ({100 * differing / pixels:.3f} %)",
                         f"{statistics.mean(scores):.4f}"])
    return rows, differing_share


def measure_speed(run: Path, size: int, settings: Settings) -> dict:
    """Latency and throughput of every backend on one run (in a child process: runtimes keep their arenas)."""
    predictors = {name: open_runtime(run, name) for name in RUNTIMES}
    rng = np.random.default_rng(0)
    image = (rng.random((size, size, 1)) * 255).astype(np.float32)
    batch = [(rng.random((size, size, 1)) * 255).astype(np.float32) for _ in range(16)]
    latency, latency_load = interleaved({b: (lambda p=p: p.predict(image)) for b, p in predictors.items()},
                                        settings.latency_rounds, settings.budget, settings.warmup, settings.settle)
    throughput, throughput_load = interleaved(
        {b: (lambda p=p: predict_probabilities(p, batch, batch=16)) for b, p in predictors.items()},
        settings.throughput_rounds, settings.budget, 1, settings.settle)
    return {"latency": latency, "throughput": throughput, "load": f"{latency_load}; {throughput_load}"}


def speed_in_child(run: Path, size: int, quick: bool) -> dict:
    command = [sys.executable, __file__, "--measure", str(run), "--size", str(size)] + (["--quick"] if quick else [])
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode: one run's speed as JSON
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    if args.measure:
        print(json.dumps(measure_speed(args.measure, args.size, settings)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="medistill-bench-predict-"))
    began = time.perf_counter()
    try:
        body = run_benchmark(work, settings)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    minutes = (time.perf_counter() - began) / 60
    publish(args, SECTION_KEY, SECTION_TITLE, body + f"\n\nWhole script: {minutes:.1f} min.")


def run_benchmark(work: Path, settings: Settings) -> str:
    tiles = read_nuclei(tile=settings.tile).examples
    rows_per_side = int(np.sqrt(len(tiles)))
    train_tiles, test_tiles = tiles[:-rows_per_side], tiles[-rows_per_side:]  # the bottom row is the test set
    runs: dict[tuple[str, int], Path] = {}
    export_seconds: dict[tuple[str, int, str], float] = {}
    for student in STUDENT_OPTIONS:
        for size in settings.sizes:
            run = work / f"{student}-{size}"
            timings = run / "export_seconds.json"  # the benchmark's own file, so a rerun with --work reports them
            if not timings.is_file():
                shutil.rmtree(run, ignore_errors=True)
                if student == DEFAULT_STUDENT and size == settings.sizes[0]:
                    train_default(run, size, train_tiles, settings.train_epochs)
                else:
                    untrained(run, student, size)
                seconds = {}
                for fmt in FORMATS:
                    start = time.perf_counter()
                    export_model(run, fmt)
                    seconds[fmt] = time.perf_counter() - start
                timings.write_text(json.dumps(seconds))
            for fmt, value in json.loads(timings.read_text()).items():
                export_seconds[(student, size, FORMATS[fmt].backend)] = value
            runs[(student, size)] = run
            print(f"ready: {run}", flush=True)

    cold_rows, cold = [], {}
    single = work / "one-image"
    if single.exists():
        shutil.rmtree(single)
    write_image_png(single / f"{test_tiles[0].stem}.png", test_tiles[0].image.astype(np.uint8))
    size = settings.sizes[0]
    for student in STUDENT_OPTIONS:
        seconds: dict[str, list[float]] = {b: [] for b in RUNTIMES}
        before = load_average()
        for index in range(settings.cold_rounds):
            for backend in RUNTIMES:
                out = work / "cold" / f"{student}-{backend}-{index}"
                shutil.rmtree(out, ignore_errors=True)
                seconds[backend].append(cold_start(runs[(student, size)], backend, single, out))
        load = f"{before:.2f} → {load_average():.2f}"
        for backend in RUNTIMES:
            cold[(student, backend)] = statistics.median(seconds[backend])
            cold_rows.append([f"`{student}`", f"`{backend}`", f"{cold[(student, backend)]:.2f}",
                              f"{min(seconds[backend]):.2f}–{max(seconds[backend]):.2f}", load])
        print(markdown_table(["student", "backend", "cold s"], [r[:3] for r in cold_rows[-len(RUNTIMES):]]), flush=True)

    speed_rows, ratios = [], {}
    for (student, size), run in runs.items():
        measured = speed_in_child(run, size, settings is QUICK)
        latency, throughput = measured["latency"], measured["throughput"]
        keras_ms = statistics.median(latency["keras"]) * 1000
        for backend in RUNTIMES:
            ms = statistics.median(latency[backend]) * 1000
            ratios[(student, size, backend)] = ms / keras_ms
            rate = 16 / statistics.median(throughput[backend])
            exported = export_seconds.get((student, size, RUNTIMES[backend][0]))
            speed_rows.append([f"`{student}`", f"{size}²", f"`{backend}`", f"{ms:.1f}", f"{ms / keras_ms:.2f}",
                               f"{rate:.1f}", f"{len(latency[backend])} / {len(throughput[backend])}",
                               "–" if exported is None else f"{exported:.0f}", measured["load"]])
        print(markdown_table(["student", "size", "backend", "ms"], [r[:4] for r in speed_rows[-len(RUNTIMES):]]), flush=True)

    quality, differing = quality_rows(runs[(DEFAULT_STUDENT, settings.sizes[0])], test_tiles)
    return report(settings, speed_rows, cold_rows, quality, ratios, cold, differing, len(train_tiles),
                  len(test_tiles))


def report(settings: Settings, speed_rows, cold_rows, quality, ratios, cold, differing, n_train: int,
           n_test: int) -> str:
    size = settings.sizes[0]
    passing = [name for name in list(RUNTIMES)[1:]
               if cold[(DEFAULT_STUDENT, name)] <= 1.5 and all(ratios[(DEFAULT_STUDENT, s, name)] <= 0.5
                                                              for s in settings.sizes)
               and differing[name] <= MASK_TOLERANCE[RUNTIMES[name][1]]]
    tolerance = "; ".join(f"{precision}: at most {100 * share:g} % of the mask pixels differ from Keras'"
                          for precision, share in MASK_TOLERANCE.items())
    verdict = (f"met by {', '.join(f'`{b}`' for b in passing)}" if passing else
               "not met: no runtime has cold start ≤ 1.5 s, batch-1 latency ≤ 0.5× Keras at every size and "
               "masks within tolerance")
    verdict += f" (tolerance, {tolerance})"
    return "\n\n".join([
        "Threads: each runtime's default (TensorFlow's and OpenVINO's pools over all cores, ONNX Runtime one "
        "thread per physical core, LiteRT `num_threads` = CPU count). OpenVINO runs in f32 "
        "(`INFERENCE_PRECISION_HINT`; its bf16 default on this CPU changes logits by ~0.03) with "
        "`PERFORMANCE_HINT` LATENCY, as `medistill predict` opens it; `openvino-bf16` is the same export "
        "with `medistill predict --precision bf16` (bf16 inference, on this CPU's AVX-512 BF16 units). Exports are "
        "`keras.Model.export` for a fixed S×S×1 input and any batch, each checked against Keras when written.",
        "### Latency and throughput\n\nms = median batch-1 `predictor.predict(image)` on an S×S image "
        "(preprocessing, forward, sigmoid, restore); × Keras = that median / Keras' median; img/s = 16 / median "
        "time of `predict_probabilities(predictor, 16 images, batch=16)`; each student and size is measured in "
        "a fresh child process holding only its predictors. Rounds = latency / throughput rounds "
        "(each round calls every backend once, in turn, each call "
        f"{1000 * settings.settle:.0f} ms after the previous one ended, so that no runtime's spinning thread pool "
        "slows the next). Export s = time of `medistill export` for that format "
        "(first run of the script).",
        markdown_table(["student", "size", "backend", "batch-1 ms", "× Keras", "batch-16 img/s", "rounds",
                        "export s", "load (1 min) latency; throughput"], speed_rows),
        f"### Cold start\n\nA fresh `python -m medistill predict --model RUN --backend B -i ONE_IMAGE_DIR -o NEW_DIR` "
        f"on one {settings.tile}² nuclei tile ({size}² student), from `Popen` until the mask file exists; "
        f"{settings.cold_rounds} rounds, backends interleaved.",
        markdown_table(["student", "backend", "median s", "min–max s", "load (1 min) before → after"], cold_rows),
        f"### Parity, flips and post-processing (default student, {size}²)\n\n`unet` (16 base filters) trained "
        f"{settings.train_epochs} epochs (BCE, Adam 3e-3, batch 4, no augmentation) on {n_train} nuclei tiles of "
        f"{settings.tile}² (stardist's DSB-2018 image), tested on the {n_test} tiles of the bottom row, against "
        "the nuclei masks. Max abs Δp = the largest probability difference from Keras over all test pixels; "
        "pixels ≠ Keras = mask pixels that differ from Keras' mask. A set this small shows whether an option "
        "helps on nuclei, not its general effect; `--largest-component` is meant for one-piece organs, not for "
        "many nuclei.",
        markdown_table(["backend", "options", "max abs Δp vs Keras", "pixels ≠ Keras", "mean Dice"], quality),
        f"**Acceptance** (a backend with cold start ≤ 1.5 s and batch-1 latency ≤ 0.5× the Keras predictor "
        f"for the default student, masks identical within tolerance): {verdict}.",
    ])


if __name__ == "__main__":
    main()
