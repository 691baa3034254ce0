"""MedDistill end to end: the label-free student against its teacher, baselines and bounds.

For each data set (synthetic phantoms, stardist ``nuclei`` tiles, ``colin27`` brain
slices), through the real commands a user types, each in its own process:

1. a YOLO detector is trained on a labelled detector split (``Creat_yolodata.py``,
   ``detection.py train``) and predicts the boxes of the distillation images and of the
   test images (``detection.py predict``); oracle boxes come from the ground-truth
   masks (``detection.py boxes-from-masks``);
2. LiteMedSAM runs once per image and boxes file into a teacher cache
   (``python -m medistill teach``), reused by every MedDistill variant (``--cache``);
3. ``meddistill.py`` trains the student without masks (each weighting rule, co-learning
   on and off, detector or oracle boxes), ``python -m medistill train`` trains the same
   student on the same images with their masks (the supervised upper bound), and
   ``predict_eval.py`` measures both on the test images.

In this process: detector box recall, the teacher's Dice (cached fused soft masks > 0.5
on the test images), the box-as-mask baseline (boxes filled as masks), and CPU latency
per image of the student, the detector (in a separate process: torch) and the teacher.
Last, on a small subset of phantoms, the wall time of ``meddistill.py`` building its
teacher cache against ``--live-teacher`` (the teacher called at every step), same
epochs and data.

Two passes, so that a run cut short still covers every data set: first the core of each
data set (the first MedDistill variant), then the other variants; the section is
rewritten after each data set of either pass. Every finished command is recorded in
``WORK/steps.json``; ``--work DIR --resume`` continues an interrupted run, reusing them
(a command whose inputs were remade, or whose outputs are gone, runs again).

    .venv/bin/python benchmarks/bench_meddistill.py [--quick] [--datasets phantoms nuclei colin27] [--work DIR [--resume]]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import common
from common import (CommandLog, argument_parser, copy_pairs, exported_stems, fill_boxes, load_average,
                    markdown_table, mean_std, publish, slice_index, time_runs)

SECTION_KEY = "meddistill"
SECTION_TITLE = "MedDistill (LiteMedSAM → student, no labels): Dice, HD95, speed, teacher cache"
TEACHER = "litemedsam"
THIS_SCRIPT = Path(__file__).resolve().relative_to(common.REPO_ROOT)


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Student:
    """A student name and its ``--student-options``."""

    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"`{self.name}` {json.dumps(self.options)}" if self.options else f"`{self.name}`"

    def arguments(self) -> list[str]:
        return ["--student", self.name, "--student-options", json.dumps(self.options)]


@dataclass(frozen=True)
class Variant:
    """One MedDistill run: which boxes, which weighting rule, co-learning or not."""

    boxes: str  # "detector" or "oracle"
    weighting: str = "ulwr"
    co_learn: bool = False

    @property
    def name(self) -> str:
        return f"{self.boxes}_{self.weighting}" + ("_colearn" if self.co_learn else "")

    @property
    def label(self) -> str:
        return f"MedDistill `{self.weighting}`" + (" + `--co-learn`" if self.co_learn else "")

    def arguments(self, plan: Plan) -> list[str]:
        options = ["--weighting", self.weighting]
        if self.weighting == "fixed":
            options += ["--fixed-weights", json.dumps(plan.fixed_weights)]
        if self.co_learn:
            options += ["--co-learn", "--refresh-every", str(plan.refresh_every)]
        return options


@dataclass(frozen=True)
class DataSettings:
    """Sizes and detector training of one data set."""

    detector_imgsz: int
    detector_epochs: int
    min_area: int
    variants: tuple[Variant, ...]
    counts: dict = field(default_factory=dict)  # data-set specific sizes, see the builders
    oracle_test_teacher: bool = False  # also run the teacher on the test images with oracle boxes



@dataclass(frozen=True)
class Plan:
    """Everything that differs between a full and a quick run."""

    student: Student
    img_size: int
    epochs: int
    batch: int
    lr: float
    val_fraction: float
    refresh_every: int
    fixed_weights: dict
    data: dict[str, DataSettings]
    live_images: int  # the cache-vs-live comparison: phantoms, epochs
    live_epochs: int
    latency_images: int

    def training_arguments(self) -> list[str]:
        """Options shared by ``meddistill.py`` and ``medistill train`` (same student, size, epochs)."""
        return [*self.student.arguments(), "--img-size", str(self.img_size), "--epochs", str(self.epochs),
                "--batch", str(self.batch), "--lr", str(self.lr), "--val-fraction", str(self.val_fraction),
                "--seed", "0"]


ALL_VARIANTS = (Variant("detector", "ulwr"), Variant("detector", "learned"), Variant("detector", "fixed"),
                Variant("detector", "ulwr", co_learn=True), Variant("oracle", "ulwr"))
FULL = Plan(
    student=Student("unet", {"base_filters": 16}), img_size=64, epochs=30, batch=4, lr=1e-3,
    val_fraction=0.2, refresh_every=10, fixed_weights={"bce": 1.0, "prob": 1.0, "feat": 0.5},
    data={
        "phantoms": DataSettings(128, 25, 1, ALL_VARIANTS,
                                 {"detector": 100, "detector_val": 20, "distill": 32, "test": 16, "size": 128},
                                 oracle_test_teacher=True),
        "nuclei": DataSettings(64, 60, 4, (Variant("detector"), Variant("oracle")), {"tile": 64}),
        "colin27": DataSettings(128, 40, 50, (Variant("detector"),),
                                {"distill": 24, "test": 12, "gap": 5, "detector": 70}),
    },
    live_images=4, live_epochs=3, latency_images=4,
)
QUICK = Plan(
    student=Student("unet", {"base_filters": 4, "depth": 2}), img_size=64, epochs=1, batch=4, lr=1e-3,
    val_fraction=0.25, refresh_every=1, fixed_weights={"bce": 1.0, "prob": 1.0, "feat": 0.5},
    data={
        "phantoms": DataSettings(64, 1, 1, ALL_VARIANTS,
                                 {"detector": 12, "detector_val": 4, "distill": 8, "test": 4, "size": 64},
                                 oracle_test_teacher=True),
        "nuclei": DataSettings(64, 1, 4, (Variant("detector"), Variant("oracle")), {"tile": 128}),
        "colin27": DataSettings(64, 1, 50, (Variant("detector"),),
                                {"distill": 8, "test": 4, "gap": 2, "detector": 8}),
    },
    live_images=4, live_epochs=2, latency_images=2,
)
DEFAULT_DATASETS = ("phantoms", "nuclei", "colin27")


# ---------------------------------------------------------------------------
# Commands that a later run can reuse
# ---------------------------------------------------------------------------


@dataclass
class ResumableLog(CommandLog):
    """A :class:`CommandLog` that records every finished command (wall seconds, load) in
    ``WORK/steps.json``; with ``resume`` a recorded command is not run again and its record is
    used (for ``--resume`` after a crash or a fix of this script, with the same ``--work``).
    ``force=True`` runs a command whose inputs were just remade (``last_reused`` is False); a command
    one of whose ``outputs`` is missing runs too."""

    resume: bool = False
    last_load: str = ""
    last_reused: bool = False
    reused_seconds: float = 0.0  # wall time of the reused commands when they ran (in an earlier process)
    _reused_here: set = field(default_factory=set)

    def run(self, arguments: Sequence[str], log_file: Path, force: bool = False,
            outputs: Sequence[Path] = ()) -> float:
        shown, record = self.shown(arguments), self.work / "steps.json"
        done = _read_json(record)
        present = all(Path(path).exists() for path in outputs)
        self.last_reused = self.resume and not force and present and shown in done
        if self.last_reused:
            self.lines.append(shown)
            print(f"$ {shown}   (reused from {record})", flush=True)
            self.last_load = done[shown]["load"]
            if shown not in self._reused_here:  # not run by this process
                self.reused_seconds += done[shown]["seconds"]
            return done[shown]["seconds"]
        before = load_average()
        seconds = super().run(arguments, log_file)
        self._reused_here.add(shown)
        self.last_load = f"{before:.2f} → {load_average():.2f}"
        done[shown] = {"seconds": seconds, "load": self.last_load}
        record.write_text(json.dumps(done, indent=1), encoding="utf-8")
        return seconds


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


# ---------------------------------------------------------------------------
# Data sets: each builder writes ROOT/detector/{train,val}, ROOT/distill and ROOT/test,
# each with images/ and masks/ (the distillation never reads distill/masks)
# ---------------------------------------------------------------------------


def prepare_phantoms(root: Path, counts: dict, commands: CommandLog) -> str:
    size = counts["size"]
    folders = (("detector/train", counts["detector"], 2), ("detector/val", counts["detector_val"], 3),
               ("distill", counts["distill"], 0), ("test", counts["test"], 1))
    for folder, n, seed in folders:
        commands.run(["-m", "medistill", "phantoms", "--out", str(root / folder), "--n", str(n),
                      "--size", str(size), "--seed", str(seed), "--overwrite"],
                     root / "logs" / f"phantoms_{folder.replace('/', '_')}.log")
    return (f"phantoms of {size} px, four disjoint sets: detector train {counts['detector']} (seed 2) / "
            f"detector val {counts['detector_val']} (seed 3), distillation {counts['distill']} (seed 0, "
            f"masks unused except by the supervised bound and the oracle boxes), test {counts['test']} "
            "(seed 1); about one phantom in five has no lesion")


def prepare_nuclei(root: Path, counts: dict, commands: CommandLog) -> str:
    export, tile = root / "export", counts["tile"]
    commands.run(["-m", "medistill", "sources", "--name", "nuclei", "--tile", str(tile), "--out", str(export),
                  "--overwrite"], root / "logs" / "nuclei_export.log")
    stems = exported_stems(export)
    rows = sorted({stem.split("_x")[0] for stem in stems})  # rows of tiles, top to bottom
    val = len(rows) // 2 - 1
    groups = {"detector/train": rows[:val], "detector/val": rows[val:val + 1],
              "distill": rows[val + 1:-1], "test": rows[-1:]}
    for folder, chosen_rows in groups.items():
        copy_pairs(export, [s for s in stems if s.split("_x")[0] in chosen_rows], root / folder)
    sizes = {folder: len(exported_stems(root / folder)) for folder in groups}
    return (f"stardist DSB-2018 nuclei image (512 px) cut into {len(stems)} tiles of {tile} px, split by "
            f"rows of tiles: detector train {sizes['detector/train']} / detector val {sizes['detector/val']} "
            f"(top rows), distillation {sizes['distill']}, test {sizes['test']} (bottom row); one box per "
            "connected component (touching nuclei merge into one box)")


def prepare_colin27(root: Path, counts: dict, commands: CommandLog) -> str:
    export = root / "export"
    commands.run(["-m", "medistill", "sources", "--name", "colin27", "--out", str(export), "--overwrite"],
                 root / "logs" / "colin27_export.log")
    stems = sorted(exported_stems(export), key=slice_index)
    first = len(stems) // 2 - counts["test"] // 2
    test = stems[first:first + counts["test"]]
    low, high = slice_index(test[0]) - counts["gap"], slice_index(test[-1]) + counts["gap"]
    outside = [s for s in stems if not low <= slice_index(s) <= high]
    distill = _evenly(outside[0::2], counts["distill"])
    detector = _evenly(outside[1::2], counts["detector"])
    detector_val = detector[::6]
    detector_train = [s for s in detector if s not in detector_val]
    for folder, chosen in (("detector/train", detector_train), ("detector/val", detector_val),
                           ("distill", distill), ("test", test)):
        copy_pairs(export, chosen, root / folder)
    return (f"Colin27 T1 axial slices (181×217, skull included), ch2bet brain mask; test = {len(test)} "
            f"contiguous slices z{slice_index(test[0])}–z{slice_index(test[-1])}, slices within "
            f"{counts['gap']} of them unused; of the other slices, alternate ones go to the distillation "
            f"set ({len(distill)}, evenly spaced) and to the detector ({len(detector_train)} train / "
            f"{len(detector_val)} val); boxes from components of at least 50 pixels (one subject)")


def _evenly(items: list[str], n: int) -> list[str]:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


DATASET_BUILDERS: dict[str, Callable[[Path, dict, CommandLog], str]] = {
    "phantoms": prepare_phantoms,
    "nuclei": prepare_nuclei,
    "colin27": prepare_colin27,
}


# ---------------------------------------------------------------------------
# Boxes and teacher caches (subprocesses)
# ---------------------------------------------------------------------------


def make_boxes(root: Path, settings: DataSettings, commands: ResumableLog) -> dict:
    """Train the detector; write every boxes file. Returns train seconds and file paths."""
    logs, boxes = root / "logs", root / "boxes"
    yolo, run = root / "yolo", root / "runs" / "detector"
    commands.run(["Creat_yolodata.py", "--data", str(root / "detector"), "--out", str(yolo), "--overwrite",
                  "--min-area", str(settings.min_area)], logs / "yolodata.log")
    seconds = commands.run(
        ["detection.py", "train", "--data", str(yolo / "data.yaml"), "--model", "yolo11n.yaml",
         "--imgsz", str(settings.detector_imgsz), "--epochs", str(settings.detector_epochs), "--batch", "8",
         "--seed", "0", "--out", str(run), "--overwrite"], logs / "detector_train.log",
        outputs=[run / "weights" / "best.pt"])
    weights = run / "weights" / "best.pt"
    fresh_detector = not commands.last_reused
    paths, fresh = {}, {}
    for split in ("distill", "test"):
        paths[("detector", split)] = boxes / f"{split}_detector.json"
        commands.run(["detection.py", "predict", "--weights", str(weights), "--image_dir",
                      str(root / split / "images"), "--out", str(paths[("detector", split)])],
                     logs / f"predict_{split}.log", force=fresh_detector, outputs=[paths[("detector", split)]])
        fresh[("detector", split)] = fresh_detector
        paths[("oracle", split)] = boxes / f"{split}_oracle.json"
        commands.run(["detection.py", "boxes-from-masks", "--mask_dir", str(root / split / "masks"),
                      "--image_dir", str(root / split / "images"), "--min-area", str(settings.min_area),
                      "--out", str(paths[("oracle", split)])], logs / f"oracle_{split}.log",
                     outputs=[paths[("oracle", split)]])
        fresh[("oracle", split)] = not commands.last_reused
    return {"train_seconds": seconds, "weights": weights, "paths": paths, "fresh": fresh,
            "fresh_detector": fresh_detector}


def teacher_caches(root: Path, kinds: Sequence[str], boxes: dict, commands: ResumableLog,
                   oracle_test: bool) -> dict:
    """One LiteMedSAM cache per (boxes kind, split) that a figure needs; wall seconds of each."""
    caches = {}
    wanted = [(kind, "distill") for kind in kinds] + [("detector", "test")]
    if oracle_test:
        wanted.append(("oracle", "test"))
    for kind, split in wanted:
        path = root / "caches" / f"{split}_{kind}.h5"
        seconds = commands.run(
            ["-m", "medistill", "teach", "--image_dir", str(root / split / "images"), "--boxes",
             str(boxes["paths"][(kind, split)]), "--teacher", TEACHER, "--out", str(path), "--overwrite",
             "--no-progress"], root / "logs" / f"teach_{split}_{kind}.log", force=boxes["fresh"][(kind, split)],
            outputs=[path])
        caches[(kind, split)] = {"path": path, "seconds": seconds}
    return caches


# ---------------------------------------------------------------------------
# Students (subprocesses)
# ---------------------------------------------------------------------------


@dataclass
class StudentResult:
    """A trained student and its figures on the test images."""

    method: str
    boxes: str
    run_dir: Path
    train_seconds: float
    metrics: dict
    load: str
    summary: dict


def evaluate_student(root: Path, run_dir: Path, commands: ResumableLog) -> dict:
    """``predict_eval.py`` on the test images (after the training command of ``run_dir``); the
    ``summary`` of its metrics.json."""
    vis = run_dir / "eval"
    commands.run(["predict_eval.py", "--image_dir", str(root / "test" / "images"), "--mask_dir",
                  str(root / "test" / "masks"), "--model_path", str(run_dir), "--vis_dir", str(vis),
                  "--num_vis", "4"], root / "logs" / f"eval_{run_dir.name}.log",
                 force=not commands.last_reused, outputs=[vis / "metrics.json"])
    return json.loads((vis / "metrics.json").read_text(encoding="utf-8"))["summary"]


def run_meddistill(root: Path, variant: Variant, plan: Plan, boxes: dict, caches: dict,
                   commands: ResumableLog) -> StudentResult:
    run_dir = root / "runs" / f"meddistill_{variant.name}"
    seconds = commands.run(
        ["meddistill.py", "--image_dir", str(root / "distill" / "images"), "--boxes",
         str(boxes["paths"][(variant.boxes, "distill")]), "--teacher", TEACHER, "--cache",
         str(caches[(variant.boxes, "distill")]["path"]), *plan.training_arguments(),
         *variant.arguments(plan), "--out", str(run_dir), "--overwrite"],
        root / "logs" / f"meddistill_{variant.name}.log", outputs=[run_dir / "summary.json"])
    load = commands.last_load
    metrics = evaluate_student(root, run_dir, commands)
    return StudentResult(variant.label, variant.boxes, run_dir, seconds, metrics, load,
                         _read_json(run_dir / "summary.json"))


def run_supervised(root: Path, plan: Plan, commands: ResumableLog) -> StudentResult:
    run_dir = root / "runs" / "supervised"
    seconds = commands.run(["-m", "medistill", "train", "--data", str(root / "distill"),
                            *plan.training_arguments(), "--out", str(run_dir), "--overwrite"],
                           root / "logs" / "supervised.log", outputs=[run_dir / "summary.json"])
    load = commands.last_load
    metrics = evaluate_student(root, run_dir, commands)
    return StudentResult("supervised student (masks)", "–", run_dir, seconds, metrics, load,
                         _read_json(run_dir / "summary.json"))


# ---------------------------------------------------------------------------
# Figures computed here: box recall, teacher Dice, box-as-mask, latency
# ---------------------------------------------------------------------------


def box_recall(detector_path: Path, oracle_path: Path) -> dict:
    """Detector boxes against the ground-truth boxes: recall@0.5, precision, empty images."""
    from medistill.boxes.boxes_file import read_boxes
    from medistill.boxes.metrics import BoxMatch, match_boxes

    found, truth = read_boxes(detector_path).by_stem(), read_boxes(oracle_path).by_stem()
    total = BoxMatch()
    for stem, entry in truth.items():
        total = total + match_boxes(found[stem].boxes, entry.boxes)
    return {"recall": total.recall, "precision": total.precision, "truths": total.truths,
            "images": len(truth), "without_box": sum(1 for e in found.values() if not e.boxes)}


def _test_samples(root: Path):
    from medistill.data import pair_folder

    return pair_folder(root / "test" / "images", root / "test" / "masks")


def _summary(predictions: dict, root: Path) -> dict:
    """predict_eval.py's summary of ``{stem: boolean mask}`` against the test masks."""
    from medistill.data import load_sample
    from medistill.evaluate.metrics import binary_metrics
    from medistill.evaluate.report import MetricTable

    table = MetricTable()
    for sample in _test_samples(root):
        truth = load_sample(sample)[1] > 0
        table.add(sample.stem, binary_metrics(predictions[sample.stem], truth))
    return table.summary()


def teacher_summary(cache_path: Path, root: Path) -> dict:
    """The teacher's cached fused soft masks > 0.5 against the test masks."""
    import h5py

    with h5py.File(cache_path, "r") as cache:
        images = cache["images"]
        predictions = {stem: images[stem]["fused"][()] > 0.5 for stem in images}
    return _summary(predictions, root)


def box_mask_summary(boxes_path: Path, root: Path) -> dict:
    """The box-as-mask baseline on the test images."""
    from medistill.boxes.boxes_file import read_boxes

    return _summary({stem: fill_boxes(entry) for stem, entry in read_boxes(boxes_path).by_stem().items()}, root)


@dataclass
class Latency:
    """CPU ms per image of each stage, on the test images."""

    student_params: int
    student_ms: float
    detector_ms: float
    teacher_ms: float
    teacher_boxes: float
    load: str

    @property
    def ratio(self) -> float:
        return (self.detector_ms + self.teacher_ms) / self.student_ms


def detector_latency(root: Path, weights: Path, commands: ResumableLog, fresh_detector: bool) -> float:
    """ms per image of the detector, measured in its own process (torch and TensorFlow do not mix)."""
    out = root / "detector_latency.json"
    commands.run([str(THIS_SCRIPT), "--time-detector", str(weights), str(root / "test" / "images"), str(out)],
                 root / "logs" / "detector_latency.log", force=fresh_detector, outputs=[out])
    return json.loads(out.read_text())["ms_per_image"]


def time_detector(weights: str, image_dir: str, out: str) -> None:
    """Hidden mode: predict over ``image_dir`` once to warm up, then time a second pass at batch 1."""
    from medistill.boxes.detector import predict_boxes

    predict_boxes(weights, image_dir, batch=1)
    start = time.perf_counter()
    result = predict_boxes(weights, image_dir, batch=1)
    seconds = time.perf_counter() - start
    Path(out).write_text(json.dumps({"ms_per_image": 1000 * seconds / len(result.images),
                                     "images": len(result.images)}))


_TEACHERS: dict = {}


def teacher_latency(root: Path, boxes_path: Path, n_images: int) -> tuple[float, float]:
    """Median ms of ``teacher.predict`` (encoder + decoder of its boxes) on test images with boxes,
    each timed on its second call; and the mean number of boxes of those images."""
    import statistics

    import numpy as np

    from medistill.boxes.boxes_file import read_boxes
    from medistill.data import load_sample
    from medistill.teachers.registry import build_teacher

    if TEACHER not in _TEACHERS:
        _TEACHERS[TEACHER] = build_teacher(TEACHER)
    teacher = _TEACHERS[TEACHER]
    entries = read_boxes(boxes_path).by_stem()
    durations, counts = [], []
    for sample in _test_samples(root):
        entry = entries[sample.stem]
        if not entry.boxes:
            continue
        image = load_sample(sample)[0]
        xyxy = np.array([b.xyxy for b in entry.boxes], np.float32)
        teacher.predict(image, xyxy)
        start = time.perf_counter()
        teacher.predict(image, xyxy)
        durations.append(1000 * (time.perf_counter() - start))
        counts.append(len(xyxy))
        if len(durations) >= n_images:
            break
    if not durations:
        return float("nan"), 0.0
    return statistics.median(durations), float(np.mean(counts))


def student_latency(root: Path, run_dir: Path) -> tuple[int, float]:
    """Parameters and median ms per image of the exported student (preprocessing, forward at
    batch 1, mapping back to the image size), as ``predict_eval.py`` runs it."""
    import keras

    import medistill.networks  # noqa: F401  (registers the custom layers)
    from medistill.data import load_sample
    from medistill.export import load_predictor

    keras_file = next(p for p in (run_dir / "student.keras", run_dir / "model.keras") if p.exists())
    params = keras.saving.load_model(str(keras_file), compile=False).count_params()
    predictor = load_predictor(run_dir)
    images = [load_sample(sample)[0] for sample in _test_samples(root)]
    position = iter(range(10 ** 9))
    timing = time_runs(lambda: predictor.predict(images[next(position) % len(images)]), repeats=30, warmup=2,
                       min_repeats=10, budget_seconds=10)
    return params, 1000 * timing.median


# ---------------------------------------------------------------------------
# One data set
# ---------------------------------------------------------------------------


@dataclass
class DatasetResult:
    name: str
    description: str
    settings: DataSettings
    detector_seconds: float
    recall: dict  # split -> box_recall()
    cache_seconds: dict
    baselines: list  # (method, boxes, summary)
    students: list[StudentResult]
    latency: Latency
    oracle_test_teacher: bool
    failures: dict  # MedDistill variant -> last line of its error


def run_dataset(name: str, work: Path, plan: Plan, commands: ResumableLog, variants: Sequence[Variant],
                oracle_test: bool, previous: DatasetResult | None = None) -> DatasetResult:
    """Data, boxes, teacher caches, the MedDistill ``variants``, the supervised bound and the figures.

    Given the ``previous`` result of a first pass (with ``commands.resume`` on), every command of that
    pass is reused and its latency figures are kept.
    """
    settings, root = plan.data[name], work / name
    description = DATASET_BUILDERS[name](root, settings.counts, commands)
    boxes = make_boxes(root, settings, commands)
    paths = boxes["paths"]
    recall = {split: box_recall(paths[("detector", split)], paths[("oracle", split)])
              for split in ("distill", "test")}
    print(f"{name}: detector box recall {recall['test']['recall']:.3f} (test)", flush=True)
    kinds = [kind for kind in ("detector", "oracle") if any(v.boxes == kind for v in variants)]
    caches = teacher_caches(root, kinds, boxes, commands, oracle_test)
    baselines = []
    for kind in ("detector", "oracle"):
        baselines.append(("boxes filled as masks", kind, box_mask_summary(paths[(kind, "test")], root)))
        if (kind, "test") in caches:
            baselines.append((f"teacher {TEACHER} (fused soft mask > 0.5)", kind,
                              teacher_summary(caches[(kind, "test")]["path"], root)))
    students, failures = [], {}
    for variant in variants:
        try:
            result = run_meddistill(root, variant, plan, boxes, caches, commands)
        except RuntimeError as error:  # one failed variant must not lose the others
            print(f"{name} {variant.name} FAILED: {error}", flush=True)
            failures[f"{variant.label} ({variant.boxes} boxes)"] = str(error).splitlines()[-1][:300]
            continue
        print(f"{name} {variant.name}: Dice {result.metrics['metrics']['dice']['mean']:.3f}", flush=True)
        students.append(result)
    students.append(run_supervised(root, plan, commands))
    cache_seconds = {f"{split} ({kind} boxes)": entry["seconds"] for (kind, split), entry in caches.items()}
    if previous is not None:
        latency = previous.latency
    else:
        latency = measure_latency(root, plan, students[0].run_dir, boxes, commands)
    return DatasetResult(name, description, settings, boxes["train_seconds"], recall, cache_seconds, baselines,
                         students, latency, oracle_test, failures)


def measure_latency(root: Path, plan: Plan, run_dir: Path, boxes: dict, commands: ResumableLog) -> Latency:
    """Student (``run_dir``), detector and teacher CPU latency per test image."""
    load_before = load_average()
    params, student_ms = student_latency(root, run_dir)
    detector_ms = detector_latency(root, boxes["weights"], commands, boxes["fresh_detector"])
    teacher_ms, teacher_boxes = teacher_latency(root, boxes["paths"][("detector", "test")], plan.latency_images)
    return Latency(params, student_ms, detector_ms, teacher_ms, teacher_boxes,
                   f"{load_before:.2f} → {load_average():.2f}")


# ---------------------------------------------------------------------------
# Teacher cache against the live teacher (phantoms subset)
# ---------------------------------------------------------------------------


@dataclass
class LiveComparison:
    images: int
    epochs: int
    cached_seconds: float
    live_seconds: float
    loads: tuple[str, str]
    teacher_calls: tuple[object, object]  # cached run: images written to its cache; live run: teacher calls

    @property
    def ratio(self) -> float:
        return self.live_seconds / self.cached_seconds


def cache_against_live(work: Path, plan: Plan, commands: ResumableLog) -> LiveComparison:
    """``meddistill.py`` on the first phantoms of the distillation set, building its cache, then
    with ``--live-teacher``; same data, epochs and settings, detector boxes, no validation split."""
    source, root = work / "phantoms", work / "live"
    stems = exported_stems(source / "distill")[:plan.live_images]
    copy_pairs(source / "distill", stems, root / "data")
    from medistill.boxes.boxes_file import BoxesFile, read_boxes, write_boxes

    boxes = read_boxes(source / "boxes" / "distill_detector.json")
    kept = [entry for entry in boxes.images if entry.stem in set(stems)]
    write_boxes(root / "boxes.json", BoxesFile(boxes.class_names, kept, dict(boxes.source)))
    common_arguments = ["meddistill.py", "--image_dir", str(root / "data" / "images"), "--boxes",
                        str(root / "boxes.json"), "--teacher", TEACHER, *plan.student.arguments(),
                        "--img-size", str(plan.img_size), "--epochs", str(plan.live_epochs), "--batch",
                        str(plan.batch), "--lr", str(plan.lr), "--val-fraction", "0", "--seed", "0"]
    seconds, loads = {}, []
    for mode, extra in (("cached", []), ("live", ["--live-teacher"])):
        seconds[mode] = commands.run([*common_arguments, *extra, "--out", str(root / f"run_{mode}"),
                                      "--overwrite"], root / f"meddistill_{mode}.log",
                                     outputs=[root / f"run_{mode}" / "summary.json"])
        loads.append(commands.last_load)
    cached = _read_json(root / "run_cached" / "summary.json")
    live = _read_json(root / "run_live" / "summary.json")
    calls = ((cached.get("cache_build") or {}).get("written"), live.get("teacher_calls"))
    return LiveComparison(len(stems), plan.live_epochs, seconds["cached"], seconds["live"], tuple(loads), calls)


# ---------------------------------------------------------------------------
# Tables and notes
# ---------------------------------------------------------------------------


def _figure(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _cases(summary: dict) -> str:
    cases = summary.get("cases", {})
    return "/".join(str(cases.get(k, 0)) for k in ("normal", "both_empty", "missed", "false_positive"))


def _epochs(summary: dict) -> str:
    run = summary.get("epochs_run", summary.get("epochs"))
    return "" if run is None else str(run)


def quality_table(results: Sequence[DatasetResult], plan: Plan) -> str:
    headers = ["data set", "boxes", "method", "Dice mean ± std", "HD95 (px) mean ± std",
               "cases normal/both empty/missed/false pos.", "best val Dice", "epochs run", "train s",
               "load (1 min) before → after"]
    rows = []
    for r in results:
        for method, kind, summary in r.baselines:
            metrics = summary["metrics"]
            rows.append([r.name, kind, method, mean_std(metrics["dice"], 3), mean_std(metrics["hd95"], 1),
                         _cases(summary), "", "", "", ""])
        if not r.oracle_test_teacher:
            rows.append([r.name, "oracle", f"teacher {TEACHER}", "not run (see the notes)", "", "", "", "", "", ""])
        for s in r.students:
            metrics = s.metrics["metrics"]
            rows.append([r.name, s.boxes, s.method, mean_std(metrics["dice"], 3), mean_std(metrics["hd95"], 1),
                         _cases(s.metrics), _figure(s.summary.get("best_val_dice")),
                         f"{_epochs(s.summary)} of {plan.epochs}", f"{s.train_seconds:.0f}", s.load])
        for label, error in r.failures.items():
            rows.append([r.name, "", label, f"failed: {error}", "", "", "", "", "", ""])
    return markdown_table(headers, rows)


def recall_table(results: Sequence[DatasetResult]) -> str:
    headers = ["data set", "detector train s", "box recall@0.5 distill / test", "box precision distill / test",
               "images without a box distill / test", "teacher cache wall s"]
    rows = []
    for r in results:
        d, t = r.recall["distill"], r.recall["test"]
        caches = ", ".join(f"{k}: {v:.0f}" for k, v in r.cache_seconds.items())
        rows.append([r.name, f"{r.detector_seconds:.0f}", f"{_figure(d['recall'])} / {_figure(t['recall'])}",
                     f"{_figure(d['precision'])} / {_figure(t['precision'])}",
                     f"{d['without_box']} of {d['images']} / {t['without_box']} of {t['images']}", caches])
    return markdown_table(headers, rows)


def latency_table(results: Sequence[DatasetResult], plan: Plan) -> str:
    headers = ["data set", "student", "student params", "student ms/image", "detector ms/image",
               "teacher ms/image (mean boxes)", "(detector + teacher) / student", "load (1 min) before → after"]
    rows = []
    for r in results:
        lat = r.latency
        rows.append([r.name, plan.student.label, f"{lat.student_params:,}", f"{lat.student_ms:.1f}",
                     f"{lat.detector_ms:.1f}", f"{lat.teacher_ms:.0f} ({lat.teacher_boxes:.1f})",
                     f"{lat.ratio:.0f}×", lat.load])
    return markdown_table(headers, rows)


def live_table(live: LiveComparison) -> str:
    headers = ["images", "epochs", "with the teacher cache (built in the run) s", "`--live-teacher` s",
               "live / cached", "teacher calls cached / live", "load (1 min) cached; live"]
    calls = " / ".join("?" if c is None else str(c) for c in live.teacher_calls)
    return markdown_table(headers, [[live.images, live.epochs, f"{live.cached_seconds:.0f}",
                                     f"{live.live_seconds:.0f}", f"{live.ratio:.2f}×", calls,
                                     f"{live.loads[0]}; {live.loads[1]}"]])


def method_notes(results: Sequence[DatasetResult], plan: Plan, commands: CommandLog, total_seconds: float,
                 live: LiveComparison | None, pending: Sequence[str]) -> str:
    lines = []
    if pending:
        lines += [f"**Partial run: not run yet when this section was written: {', '.join(pending)}. The same "
                  "command with the same `--work` folder and `--resume` continues it.**", ""]
    lines.append("Data sets:")
    for r in results:
        s = r.settings
        lines.append(f"- **{r.name}**: {r.description}. Detector: YOLO11n from scratch, `--imgsz "
                     f"{s.detector_imgsz} --epochs {s.detector_epochs} --batch 8`, boxes kept at conf 0.25. "
                     f"MedDistill variants: {', '.join(v.name for v in s.variants)}.")
    students = f"{plan.student.label}, `{' '.join(plan.training_arguments()[4:])}`"
    lines += [
        "",
        f"Student for every run: {students} (the same for `meddistill.py` and for the supervised bound "
        "`medistill train`, which sees the distillation images with their masks; the other settings are "
        "each command's defaults). Fixed weights: "
        f"`{json.dumps(plan.fixed_weights)}`; co-learning refreshes the targets every {plan.refresh_every} "
        "epochs. Each `meddistill.py` run reads the teacher cache built once by `medistill teach` for its boxes "
        "file (`--cache`).",
        "",
        "Dice and HD95: mean ± sample std over the test images, at the original resolution, as "
        "`predict_eval.py` computes them (students: its `metrics.json`; the rows without training were computed "
        "in the script with the same functions, `medistill.evaluate.metrics.binary_metrics` and "
        "`MetricTable`). Teacher: LiteMedSAM prompted with the boxes of each test image, the cached fused soft "
        "mask (pixel-wise max over the boxes) > 0.5; images without a box give an empty mask. Boxes filled as "
        "masks: every pixel whose centre lies in a box. HD95 in pixels, defined only when both masks are "
        "non-empty (its n); an image where both masks are empty counts as Dice 1. Box recall@0.5: "
        "ground-truth boxes (components of the mask) matched one-to-one by a detector box with IoU ≥ 0.5.",
        "",
        f"Latency, CPU, batch 1, median: student = `load_predictor(RUN).predict(image)` (preprocessing, "
        "forward, resize back) over the test images after 2 warm-up calls; detector = a second "
        "`medistill.boxes.detector.predict_boxes(..., batch=1)` pass over the test images in its own process "
        "(wall time / images, model loading included); teacher = `LiteMedSAMTeacher.predict(image, boxes)` "
        f"(image encoder + mask decoder over the image's detector boxes) on up to {plan.latency_images} test "
        "images with boxes, each timed on its second call. The ratio is (detector + teacher) / student.",
    ]
    if live is not None:
        lines += [
            "",
            f"Teacher cache against the live teacher: the first {live.images} phantoms of the distillation set "
            f"with their detector boxes, {live.epochs} epochs, `--val-fraction 0`, same student and settings; "
            "the cached run starts without a cache, so its time includes building it (one teacher call per "
            "image), while `--live-teacher` calls the teacher on every image of every step, so its cost grows "
            "with the epochs and the ratio with them. Whole command wall times, start-up included.",
        ]
    lines += [
        "",
        "\"best val Dice\" is each run's own model selection figure from its `summary.json`: for MedDistill "
        "the agreement (Dice) of student and teacher soft masks on its held-out distillation images (no ground "
        "truth), for the supervised bound the Dice against the masks of its held-out images. \"train s\" is "
        "the wall time of the whole training command (start-up, reading the cache, every epoch, export).",
        "",
        "Cut for time (2 CPU cores shared with other work; the script was sized for ~45 min): small sets and "
        f"{plan.epochs} epochs (the figures compare the methods at equal, small budgets, not the students' "
        "ceilings); the weighting rules and co-learning only on the phantoms (the real sources run `ulwr` "
        "without co-learning); students from oracle boxes on the phantoms and the nuclei, not on Colin27 (one "
        "brain per slice, which the detector finds: see its box recall); the teacher with oracle boxes on the "
        "test images only on the phantoms; the cache-vs-live comparison on a few phantoms and epochs only.",
        "",
        f"Whole script: {total_seconds / 60:.1f} min"
        + (f" (this process; plus {commands.reused_seconds / 60:.1f} min of commands it reused from an earlier "
           "`--resume` run in the same `--work` folder)" if getattr(commands, "reused_seconds", 0) else "")
        + ". Commands, in order (`$WORK` is the `--work` folder, by default a temporary one):",
        "",
        "```bash",
        *dict.fromkeys(commands.lines),  # the second pass repeats (reuses) the first pass's commands
        "```",
    ]
    return "\n".join(lines)


def section_body(results: Sequence[DatasetResult], plan: Plan, live: LiveComparison | None) -> str:
    parts = ["Segmentation of the test images (students, teacher and box baselines against the ground truth):",
             "", quality_table(results, plan), "", "Detector boxes and teacher caches:", "",
             recall_table(results), "", "CPU latency per image:", "", latency_table(results, plan)]
    if live is not None:
        parts += ["", "Wall time of `meddistill.py` with the teacher cache against `--live-teacher`:", "",
                  live_table(live)]
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace, work: Path, plan: Plan, datasets: Sequence[str]) -> None:
    """Two passes, so that a run cut short still covers every data set: first the core of each data
    set (detector boxes, the first MedDistill variant, the supervised bound, baselines, latency), then
    the other variants, the oracle-box teacher and the cache-vs-live comparison, reusing the first pass."""
    commands = ResumableLog(work, resume=args.resume)
    start = time.perf_counter()
    results: dict[str, DatasetResult] = {}
    live = None

    def write(pending: Sequence[str]) -> None:
        notes = method_notes(list(results.values()), plan, commands, time.perf_counter() - start, live, pending)
        publish(args, SECTION_KEY, SECTION_TITLE, section_body(list(results.values()), plan, live), notes)

    def second_pass(name: str) -> str:
        return f"{name} (other variants{' and the cache-vs-live comparison' if name == 'phantoms' else ''})"

    extras = [name for name in datasets
              if len(plan.data[name].variants) > 1 or plan.data[name].oracle_test_teacher]
    for index, name in enumerate(datasets):
        results[name] = run_dataset(name, work, plan, commands, plan.data[name].variants[:1], False)
        write([*datasets[index + 1:], *map(second_pass, extras)])
    commands.resume = True  # the second pass reuses the first
    for index, name in enumerate(extras):
        settings = plan.data[name]
        results[name] = run_dataset(name, work, plan, commands, settings.variants, settings.oracle_test_teacher,
                                    previous=results[name])
        if name == "phantoms":
            try:
                live = cache_against_live(work, plan, commands)
                print(f"cache vs live: {live.ratio:.2f}×", flush=True)
            except RuntimeError as error:
                print(f"cache vs live FAILED: {error}", flush=True)
        write([second_pass(n) for n in extras[index + 1:]])


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASET_BUILDERS), default=list(DEFAULT_DATASETS),
                        help=f"data sets to run (default: {' '.join(DEFAULT_DATASETS)}); the cache-vs-live "
                        "comparison runs with the phantoms")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep data and run folders here (default: a temporary folder, deleted)")
    parser.add_argument("--resume", action="store_true",
                        help="with the --work folder of an earlier run: reuse its finished commands (steps.json)")
    parser.add_argument("--time-detector", nargs=3, metavar=("WEIGHTS", "IMAGE_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resume and args.work is None:
        parser.error("--resume needs the --work folder of the earlier run")
    if args.time_detector:
        time_detector(*args.time_detector)
        return
    plan = QUICK if args.quick else FULL
    datasets = [name for name in DEFAULT_DATASETS if name in args.datasets]
    with tempfile.TemporaryDirectory(prefix="medistill-bench-meddistill-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        run_benchmark(args, work, plan, datasets)


if __name__ == "__main__":
    main()
