"""``medistill predict``'s options on trained students: bf16 against Keras, flips, post-processing.

``bench_predict.py`` times the runtimes on one briefly trained student; this script asks
what the options do to real students' masks. For each ``--student NAME=RUN:TEST`` (a run
folder, and a folder with ``images/`` and ``masks/`` of the same stems) it copies the run
(weights and card only), exports the copy to OpenVINO, and on every test image compares:

* Keras, OpenVINO fp32 and OpenVINO bf16 (``--precision bf16``): mean Dice against the
  masks, the share of mask pixels that differ from Keras' masks, the largest probability
  difference;
* Keras plain, ``--tta``, ``--min-size 20``, ``--largest-component``: mean Dice.

Every mask is :func:`medistill.predict.engine.mask_labels` at threshold 0.5 with the card's
noise floor, compared at the image's original size. Students whose NAME ends in `` seed
N`` are grouped by the rest of the name in the summary table.

    .venv/bin/python benchmarks/bench_predict_options.py --work /tmp/po \\
        --student "demo seed 0=/tmp/demo_s0/runs/distilled:/tmp/demo_s0/data/test" ...
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import common  # noqa: F401  (sets the TensorFlow environment before it is imported)
from common import argument_parser, markdown_table, publish

import numpy as np

from medistill.data.io import read_image, read_mask_values
from medistill.predict.backends import open_predictor
from medistill.predict.engine import mask_labels, predict_probabilities
from medistill.predict.exporter import export_model
from medistill.predict.postprocess import clean_labels

SECTION_KEY = "predict-options"
SECTION_TITLE = "`medistill predict` options on trained students: bf16, flips, post-processing"
RUNTIMES = {"keras": ("keras", "fp32"), "openvino": ("openvino", "fp32"), "openvino-bf16": ("openvino", "bf16")}
CLEANING = {"--min-size 20": {"min_size": 20}, "--largest-component": {"largest_component": True}}
COPY_MARKER = ".bench_predict_options-copy"  # written into each copy: only such folders are ever replaced


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def parse_student(text: str) -> tuple[str, Path, Path]:
    name, _, paths = text.partition("=")
    run, _, test = paths.partition(":")
    if not (name and run and test):
        raise SystemExit(f"--student {text!r}: expected NAME=RUN_FOLDER:TEST_FOLDER")
    return name, Path(run), Path(test)


def read_test_set(test: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, truths = [], []
    for path in sorted((test / "images").iterdir()):
        images.append(read_image(path))
        truths.append(read_mask_values(next((test / "masks").glob(path.stem + ".*"))) > 0)
    return images, truths


def measure(name: str, run: Path, test: Path, work: Path) -> dict:
    copy = work / "copies" / name.replace(" ", "_")
    if not (copy / "exports" / "model.xml").is_file():
        if copy.exists() and not (copy / COPY_MARKER).is_file():
            raise SystemExit(f"{copy} exists and this script did not make it: choose another --work")
        shutil.rmtree(copy, ignore_errors=True)  # an unfinished copy of this script's own
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "*.h5", "rounds", "eval*",
                                                                 "exports", "tensorboard"))
        (copy / COPY_MARKER).write_text(f"copy of {run}\n")
        export_model(copy, "openvino")
    images, truths = read_test_set(test)
    row: dict = {"name": name, "pixels": sum(t.size for t in truths)}
    reference = None
    for runtime, (backend, precision) in RUNTIMES.items():
        predictor = open_predictor(copy, backend, precision)
        probs = predict_probabilities(predictor, images)
        masks = [mask_labels(predictor, p) > 0 for p in probs]
        if reference is None:
            reference = (probs, masks)
        row[f"dice {runtime}"] = statistics.mean(dice(m, t) for m, t in zip(masks, truths))
        row[f"differing {runtime}"] = sum(int((m != r).sum()) for m, r in zip(masks, reference[1])) / row["pixels"]
        row[f"dp {runtime}"] = max(float(np.abs(p - r).max()) for p, r in zip(probs, reference[0]))
        if runtime == "keras":
            flipped = predict_probabilities(predictor, images, tta=True)
            row["dice --tta"] = statistics.mean(dice(mask_labels(predictor, p) > 0, t) for p, t in zip(flipped, truths))
            labels = [mask_labels(predictor, p) for p in probs]
            for option, settings in CLEANING.items():
                row[f"dice {option}"] = statistics.mean(dice(clean_labels(m, **settings) > 0, t)
                                                        for m, t in zip(labels, truths))
    print(json.dumps(row), flush=True)
    return row


def group_of(name: str) -> str:
    return name.rsplit(" seed ", 1)[0]


def tables(rows: list[dict]) -> str:
    precision_rows = [[r["name"], f"{r['dice keras']:.4f}", f"{r['dice openvino']:.4f}",
                       f"{r['dice openvino-bf16']:.4f}", f"{100 * r['differing openvino']:.3f} %",
                       f"{100 * r['differing openvino-bf16']:.3f} %", f"{r['dp openvino-bf16']:.3f}"] for r in rows]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_of(row["name"]), []).append(row)
    option_rows = []
    for group, members in groups.items():
        plain = statistics.mean(r["dice keras"] for r in members)
        cells = [group, str(len(members)), f"{plain:.3f}"]
        for option in ("--tta", *CLEANING):
            changes = [r[f"dice {option}"] - r["dice keras"] for r in members]
            cells.append(f"{plain + statistics.mean(changes):.3f} ({statistics.mean(changes):+.3f}; "
                         f"{min(changes):+.3f} to {max(changes):+.3f})")
        option_rows.append(cells)
    shares = [r["differing openvino-bf16"] for r in rows]
    moves = [r["dice openvino-bf16"] - r["dice keras"] for r in rows]
    return "\n\n".join([
        "### Precision: Keras, OpenVINO fp32, OpenVINO bf16",
        markdown_table(["student", "Dice Keras", "Dice OpenVINO fp32", "Dice OpenVINO bf16",
                        "mask pixels ≠ Keras, fp32", "mask pixels ≠ Keras, bf16", "max abs Δp, bf16"],
                       precision_rows),
        f"bf16 over the {len(rows)} students: {100 * min(shares):.3f}–{100 * max(shares):.3f} % of the mask "
        f"pixels differ from Keras'; mean Dice moves by {min(moves):+.4f} to {max(moves):+.4f}.",
        "### Flips and post-processing (Keras)\n\nMean test Dice of a group's students (Δ against plain; the "
        "smallest and largest Δ among them).",
        markdown_table(["students", "n", "plain", "`--tta`", "`--min-size 20`", "`--largest-component`"],
                       option_rows),
    ])


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--student", action="append", required=True,
                        help="NAME=RUN_FOLDER:TEST_FOLDER (TEST_FOLDER holds images/ and masks/); repeat")
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for the copies of the runs and their exports (WORK/copies/) and rows.json")
    args = parser.parse_args()
    students = [parse_student(text) for text in args.student]
    rows = [measure(name, run, test, args.work) for name, run, test in students]
    (args.work / "bench_predict_options.json").write_text(json.dumps(rows, indent=1))
    publish(args, SECTION_KEY, SECTION_TITLE, tables(rows))


if __name__ == "__main__":
    main()
