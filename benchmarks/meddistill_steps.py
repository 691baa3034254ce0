"""The commands bench_meddistill.py runs, each in its own process and reusable with ``--resume``.

:class:`ResumableLog` records every finished command in ``WORK/steps.json``. The data-set
builders write ``ROOT/detector/{train,val}``, ``ROOT/distill`` and ``ROOT/test``, each with
``images/`` and ``masks/`` (the distillation never reads ``distill/masks``);
:func:`make_boxes` trains the detector and writes every boxes file, :func:`teacher_caches`
builds the teacher caches, :func:`run_meddistill` and :func:`run_supervised` train and
evaluate the students.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import (CommandLog, copy_pairs, evenly, exported_stems, load_average, middle_block, slice_index,
                    tile_row, tile_rows)
from json_records import read_json, write_json
from meddistill_plan import TEACHER, DataSettings, Plan, Variant


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
        done = read_json(record)
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
        write_json(record, done)
        return seconds


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
    rows = tile_rows(stems)
    val = len(rows) // 2 - 1
    groups = {"detector/train": rows[:val], "detector/val": rows[val:val + 1],
              "distill": rows[val + 1:-1], "test": rows[-1:]}
    for folder, chosen_rows in groups.items():
        copy_pairs(export, [s for s in stems if tile_row(s) in chosen_rows], root / folder)
    sizes = {folder: len(exported_stems(root / folder)) for folder in groups}
    return (f"stardist DSB-2018 nuclei image (512 px) cut into {len(stems)} tiles of {tile} px, split by "
            f"rows of tiles: detector train {sizes['detector/train']} / detector val {sizes['detector/val']} "
            f"(top rows), distillation {sizes['distill']}, test {sizes['test']} (bottom row); one box per "
            "connected component (touching nuclei merge into one box)")


def prepare_colin27(root: Path, counts: dict, commands: CommandLog) -> str:
    export = root / "export"
    commands.run(["-m", "medistill", "sources", "--name", "colin27", "--out", str(export), "--overwrite"],
                 root / "logs" / "colin27_export.log")
    test, outside = middle_block(exported_stems(export), counts["test"], counts["gap"])
    distill = evenly(outside[0::2], counts["distill"])
    detector = evenly(outside[1::2], counts["detector"])
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
                         read_json(run_dir / "summary.json"))


def run_supervised(root: Path, plan: Plan, commands: ResumableLog) -> StudentResult:
    run_dir = root / "runs" / "supervised"
    seconds = commands.run(["-m", "medistill", "train", "--data", str(root / "distill"),
                            *plan.training_arguments(), "--out", str(run_dir), "--overwrite"],
                           root / "logs" / "supervised.log", outputs=[run_dir / "summary.json"])
    load = commands.last_load
    metrics = evaluate_student(root, run_dir, commands)
    return StudentResult("supervised student (masks)", "–", run_dir, seconds, metrics, load,
                         read_json(run_dir / "summary.json"))
