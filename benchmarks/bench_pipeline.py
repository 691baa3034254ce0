"""Images per second of the tf.data pipeline (``medistill.data.make_dataset``) on phantoms.

Measures the first pass (read PNG + decode + preprocess + fill the cache) and the
cached passes after it, without augmentation and with ``AugmentConfig()``, batch 8.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick]
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import common  # noqa: F401  (sets the TensorFlow environment before it is imported)
from common import Timing, argument_parser, markdown_table, publish, time_runs

from medistill.data import AugmentConfig, PreprocessConfig, make_dataset, pair_folder
from medistill.data.phantoms import generate_phantoms

SECTION_KEY = "pipeline"
SECTION_TITLE = "tf.data pipeline (`make_dataset`) on phantoms"


@dataclass(frozen=True)
class PipelineSizes:
    """How much data and how many passes one run uses."""

    images: int
    size: int
    batch: int
    cached_passes: int


FULL = PipelineSizes(images=256, size=256, batch=8, cached_passes=5)
QUICK = PipelineSizes(images=16, size=64, batch=8, cached_passes=2)


@dataclass(frozen=True)
class PassResult:
    """The timing of one kind of pass over the data set."""

    augmentation: str
    kind: str
    timing: Timing


def write_phantoms(folder: Path, sizes: PipelineSizes) -> float:
    """Generate the phantoms into ``folder``; return the seconds it took."""
    start = time.perf_counter()
    generate_phantoms(folder, sizes.images, size=sizes.size, seed=0)
    return time.perf_counter() - start


def consume(dataset) -> int:
    """Iterate over one pass of ``dataset``; return the number of images seen."""
    count = 0
    for images, _masks in dataset:
        count += int(images.shape[0])
    return count


def measure_passes(samples: list, sizes: PipelineSizes, augment: AugmentConfig | None) -> list[PassResult]:
    """First pass and cached passes of a freshly built training pipeline."""
    dataset = make_dataset(samples, PreprocessConfig(size=sizes.size), num_classes=1,
                           batch_size=sizes.batch, shuffle=True, augment=augment, seed=0)
    label = "AugmentConfig()" if augment is not None else "none"
    first = time_runs(lambda: consume(dataset), repeats=1)
    cached = time_runs(lambda: consume(dataset), repeats=sizes.cached_passes)
    return [PassResult(label, "first pass (read, decode, preprocess, cache)", first),
            PassResult(label, f"cached passes (mean of {sizes.cached_passes})", cached)]


def results_table(results: list[PassResult], images: int) -> str:
    """The Markdown table of all passes."""
    headers = ["augmentation", "pass", "seconds per pass", "images/s", "load (1 min) before → after"]
    rows = [[r.augmentation, r.kind, f"{r.timing.total / len(r.timing.seconds):.2f}",
             f"{r.timing.rate(images):.1f}", r.timing.load] for r in results]
    return markdown_table(headers, rows)


def main() -> None:
    """Run the benchmark and publish its section."""
    args = argument_parser(__doc__.splitlines()[0]).parse_args()
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="medistill-bench-pipeline-") as scratch:
        folder = Path(scratch) / "phantoms"
        generation_seconds = write_phantoms(folder, sizes)
        samples = pair_folder(folder / "images", folder / "masks")
        results = measure_passes(samples, sizes, augment=None)
        results += measure_passes(samples, sizes, augment=AugmentConfig())
    notes = (f"{sizes.images} phantoms of {sizes.size}×{sizes.size} px (8-bit PNG, seed 0; "
             f"generating them took {generation_seconds:.1f} s), `PreprocessConfig(size={sizes.size})`, "
             f"batch {sizes.batch}, shuffle on, binary masks. A pass iterates the whole data set "
             "in Python (`for x, y in dataset`), as a training loop does; each augmentation "
             "setting gets a freshly built pipeline, so its first pass starts with an empty cache.")
    publish(args, SECTION_KEY, SECTION_TITLE, results_table(results, sizes.images), notes)


if __name__ == "__main__":
    main()
