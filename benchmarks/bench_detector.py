"""Box detector: training time, mAP and box recall of a from-scratch YOLO on this CPU.

Runs the real commands a user types (``Creat_yolodata.py``, ``detection.py train``,
``detection.py eval``, ``detection.py predict``), each in its own process, on synthetic
phantoms and two real sources: the stardist ``nuclei`` tiles and ``colin27`` brain slices.

    .venv/bin/python benchmarks/bench_detector.py [--quick] [--datasets phantoms nuclei colin27] [--work DIR]
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import common
from common import (CommandLog, argument_parser, copy_pairs, exported_stems, load_average, markdown_table,
                    publish, tile_row, tile_rows)

SECTION_KEY = "detector"
SECTION_TITLE = "Box detector (YOLO from scratch): training time, mAP50, box recall"
EVAL_CONFS = ("0.25", "0.5")  # detection.py's default, and the released MedDistill predict conf


@dataclass(frozen=True)
class TrainSettings:
    """``detection.py train`` options of one data set."""

    imgsz: int
    epochs: int
    batch: int = 8
    model: str = "yolo11n.yaml"

    def arguments(self) -> list[str]:
        return ["--model", self.model, "--imgsz", str(self.imgsz), "--epochs", str(self.epochs),
                "--batch", str(self.batch)]


@dataclass(frozen=True)
class Plan:
    """Data sizes and training settings of a full or a quick run."""

    phantoms: tuple[int, int, int, int]  # train, val, test counts; size in pixels
    nuclei_tile: int
    colin27_test: int
    colin27_val: int
    colin27_gap: int
    train: dict[str, TrainSettings]


FULL = Plan(phantoms=(200, 20, 50, 128), nuclei_tile=64, colin27_test=20, colin27_val=10,
            colin27_gap=5,
            train={"phantoms": TrainSettings(imgsz=128, epochs=40),
                   "nuclei": TrainSettings(imgsz=64, epochs=60),
                   "colin27": TrainSettings(imgsz=128, epochs=30)})
QUICK = Plan(phantoms=(16, 4, 4, 64), nuclei_tile=128, colin27_test=4, colin27_val=4, colin27_gap=2,
             train={"phantoms": TrainSettings(imgsz=64, epochs=1),
                    "nuclei": TrainSettings(imgsz=64, epochs=1),
                    "colin27": TrainSettings(imgsz=64, epochs=1)})
DEFAULT_DATASETS = ("phantoms", "nuclei", "colin27")


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Data sets: each builder writes ROOT/{train,val,test}/{images,masks}
# ---------------------------------------------------------------------------


def prepare_phantoms(root: Path, plan: Plan, commands: CommandLog) -> str:
    n_train, n_val, n_test, size = plan.phantoms
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 2), ("test", n_test, 1)):
        commands.run(["-m", "medistill", "phantoms", "--out", str(root / split), "--n", str(n),
                      "--size", str(size), "--seed", str(seed)], root / f"phantoms_{split}.log")
    return (f"{n_train} train (seed 0) / {n_val} val (seed 2) / {n_test} test (seed 1) phantoms of "
            f"{size} px; one box per lesion (lesions are 3–15 % of the image side; some "
            "phantoms have none)")


def prepare_nuclei(root: Path, plan: Plan, commands: CommandLog) -> str:
    export = root.parent / "nuclei_export"
    tile = plan.nuclei_tile
    commands.run(["-m", "medistill", "sources", "--name", "nuclei", "--tile", str(tile), "--out",
                  str(export), "--overwrite"], root.parent / "nuclei_export.log")
    stems = exported_stems(export)
    rows = tile_rows(stems)
    test = [s for s in stems if tile_row(s) == rows[-1]]
    val = [s for s in stems if tile_row(s) == rows[-2]]
    train = [s for s in stems if s not in test and s not in val]
    for split, chosen in (("train", train), ("val", val), ("test", test)):
        copy_pairs(export, chosen, root / split)
    return (f"stardist DSB-2018 nuclei image (512 px) cut into {len(stems)} tiles of {tile} px; "
            f"test = the bottom row of tiles ({len(test)}), val = the row above ({len(val)}), train "
            f"= the rest ({len(train)}); one box per connected component of the binary nuclei "
            "mask (touching nuclei merge into one box)")


def _slice_index(stem: str) -> int:
    return int(re.search(r"_z(\d+)$", stem).group(1))


def prepare_colin27(root: Path, plan: Plan, commands: CommandLog) -> str:
    export = root.parent / "colin27_export"
    commands.run(["-m", "medistill", "sources", "--name", "colin27", "--out", str(export),
                  "--overwrite"], root.parent / "colin27_export.log")
    stems = sorted(exported_stems(export), key=_slice_index)
    gap = plan.colin27_gap
    first = len(stems) // 2 - plan.colin27_test // 2
    test = stems[first:first + plan.colin27_test]
    val_first = len(stems) // 4 - plan.colin27_val // 2
    val = stems[val_first:val_first + plan.colin27_val]
    blocked = {s for block in (test, val) for s in stems
               if _slice_index(block[0]) - gap <= _slice_index(s) <= _slice_index(block[-1]) + gap}
    train = [s for s in stems if s not in blocked]
    for split, chosen in (("train", train), ("val", val), ("test", test)):
        copy_pairs(export, chosen, root / split)
    return (f"Colin27 T1 axial slices (181×217, skull included) with the ch2bet brain mask; "
            f"test = {len(test)} contiguous slices z{_slice_index(test[0])}–z{_slice_index(test[-1])}, "
            f"val = {len(val)} contiguous slices z{_slice_index(val[0])}–z{_slice_index(val[-1])}, "
            f"slices within {gap} of either block unused, train = the other {len(train)} slices; "
            "boxes from components of at least 50 pixels (one subject: the figures say the "
            "detector finds a brain, not how it generalises across people)")


DATASET_BUILDERS: dict[str, Callable[[Path, Plan, CommandLog], str]] = {
    "phantoms": prepare_phantoms,
    "nuclei": prepare_nuclei,
    "colin27": prepare_colin27,
}
MIN_AREA = {"phantoms": 1, "nuclei": 4, "colin27": 50}


# ---------------------------------------------------------------------------
# Train and evaluate
# ---------------------------------------------------------------------------


@dataclass
class RunResult:
    dataset: str
    settings: TrainSettings
    counts: dict[str, dict[str, int]]
    train_seconds: float
    predict_seconds: float
    predict_images: int
    evals: dict[str, dict]
    epochs_run: int
    load: str


def train_and_evaluate(dataset: str, data_root: Path, settings: TrainSettings, work: Path,
                       commands: CommandLog) -> RunResult:
    yolo, run = work / f"{dataset}_yolo", work / "runs" / dataset
    commands.run(["Creat_yolodata.py", "--data", str(data_root), "--out", str(yolo), "--overwrite",
                  "--min-area", str(MIN_AREA[dataset])], work / f"{dataset}_yolodata.log")
    counts = json.loads((yolo / "yolodata.json").read_text())["summary"]
    load_before = load_average()
    train_seconds = commands.run(
        ["detection.py", "train", "--data", str(yolo / "data.yaml"), *settings.arguments(),
         "--seed", "0", "--out", str(run), "--overwrite"], work / f"{dataset}_train.log")
    load_after = load_average()
    best = run / "weights" / "best.pt"
    evals = {}
    for conf in EVAL_CONFS:
        out = work / f"{dataset}_eval_{conf}.json"
        commands.run(["detection.py", "eval", "--weights", str(best), "--data", str(yolo / "data.yaml"),
                      "--conf", conf, "--out", str(out)], work / f"{dataset}_eval_{conf}.log")
        evals[conf] = json.loads(out.read_text())
    test_images = yolo / "images" / "test"
    predict_seconds = commands.run(
        ["detection.py", "predict", "--weights", str(best), "--image_dir", str(test_images),
         "--out", str(work / f"{dataset}_boxes.json")], work / f"{dataset}_predict.log")
    epochs_run = len((run / "results.csv").read_text().strip().splitlines()) - 1
    return RunResult(dataset, settings, counts, train_seconds, predict_seconds,
                     len(list(test_images.glob("*.png"))), evals, epochs_run,
                     f"{load_before:.2f} → {load_after:.2f}")


def _figure(value: object, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_table(results: Sequence[RunResult]) -> str:
    headers = ["data set", "images train / val / test", "boxes test", "imgsz", "epochs",
               "train s", "P", "R", "mAP50", "mAP50-95",
               *[f"box recall@0.5 (conf {c})" for c in EVAL_CONFS],
               *[f"box precision (conf {c})" for c in EVAL_CONFS],
               "predict s (test images)", "load (1 min) before → after training"]
    rows = []
    for r in results:
        first = r.evals[EVAL_CONFS[0]]
        images = r.counts["images"]
        rows.append([
            r.dataset, " / ".join(str(images.get(s, 0)) for s in ("train", "val", "test")),
            r.counts["boxes"].get("test", 0), r.settings.imgsz,
            f"{r.epochs_run} of {r.settings.epochs}", f"{r.train_seconds:.0f}",
            _figure(first["precision"]), _figure(first["recall"]), _figure(first["map50"]),
            _figure(first["map50_95"]),
            *[_figure(r.evals[c]["box_recall"]) for c in EVAL_CONFS],
            *[_figure(r.evals[c]["box_precision"]) for c in EVAL_CONFS],
            f"{r.predict_seconds:.1f} ({r.predict_images})", r.load,
        ])
    return markdown_table(headers, rows)


def method_notes(descriptions: dict[str, str], plan: Plan, commands: CommandLog,
                 total_seconds: float) -> str:
    lines = ["Data sets:"]
    for name, text in descriptions.items():
        lines.append(f"- **{name}**: {text}. Training: `{' '.join(plan.train[name].arguments())}`, "
                     "seed 0, `detection.py train` defaults otherwise (AdamW lr0 0.003, 1 warm-up "
                     "epoch, one optimizer step per batch, mosaic off below 500 images, no AMP, "
                     "CPU).")
    lines += [
        "",
        "YOLO11n (2.6 M parameters) built from `yolo11n.yaml`, no pretrained weights, nothing "
        "downloaded. \"train s\" is the wall time of the whole `detection.py train` command "
        "(start-up, label caching, every epoch with its validation, the final validation of "
        "`best.pt`). P, R, mAP50, mAP50-95: ultralytics' validation of `best.pt` on the test "
        "split (scores down to 0.001, NMS IoU 0.7). Box recall@0.5: the fraction of ground-truth "
        "boxes matched one-to-one (same class, IoU ≥ 0.5, highest score first) by the boxes that "
        "`detection.py predict` keeps at that confidence, i.e. the prompts distillation would "
        "get; box precision: the fraction of kept boxes that match. \"predict s\": wall time of "
        "`detection.py predict` over the test images, start-up included. Other processes ran on "
        "the machine at the same time (see the load column), so times are upper bounds.",
        "",
        f"Whole script: {total_seconds / 60:.1f} min. Commands, in order (`$WORK` is a temporary folder):",
        "",
        "```bash",
        *commands.lines,
        "```",
    ]
    return "\n".join(lines)


def run_benchmark(work: Path, plan: Plan, datasets: Sequence[str]):
    commands = CommandLog(work)
    results, descriptions = [], {}
    for dataset in datasets:
        data_root = work / dataset
        descriptions[dataset] = DATASET_BUILDERS[dataset](data_root, plan, commands)
        result = train_and_evaluate(dataset, data_root, plan.train[dataset], work, commands)
        first = result.evals[EVAL_CONFS[0]]
        print(f"{dataset}: mAP50 {first['map50']:.3f}, box recall {first['box_recall']}, "
              f"train {result.train_seconds:.0f} s", flush=True)
        results.append(result)
    return results, descriptions, commands


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASET_BUILDERS),
                        default=list(DEFAULT_DATASETS),
                        help=f"data sets to run (default: {' '.join(DEFAULT_DATASETS)})")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep data and run folders here (default: a temporary folder, deleted)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medistill-bench-detector-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results, descriptions, commands = run_benchmark(work, plan, args.datasets)
    notes = method_notes(descriptions, plan, commands, time.perf_counter() - start)
    # publish() describes the machine with TensorFlow: only now, after every torch process.
    publish(args, SECTION_KEY, SECTION_TITLE, results_table(results), notes)


if __name__ == "__main__":
    main()
