"""One data set of bench_meddistill.py from data to figures, and the teacher cache against the live teacher."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import copy_pairs, exported_stems, load_average
from json_records import read_json
from meddistill_figures import (Latency, box_mask_summary, box_recall, detector_latency, student_latency,
                                teacher_latency, teacher_summary)
from meddistill_plan import TEACHER, DataSettings, Plan, Variant
from meddistill_steps import (DATASET_BUILDERS, ResumableLog, StudentResult, make_boxes, run_meddistill,
                              run_supervised, teacher_caches)


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
    cached = read_json(root / "run_cached" / "summary.json")
    live = read_json(root / "run_live" / "summary.json")
    calls = ((cached.get("cache_build") or {}).get("written"), live.get("teacher_calls"))
    return LiveComparison(len(stems), plan.live_epochs, seconds["cached"], seconds["live"], tuple(loads), calls)
