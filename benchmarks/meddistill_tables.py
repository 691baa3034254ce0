"""bench_meddistill.py's section of RESULTS.md: the quality, box-recall, latency and cache tables, the notes."""

from __future__ import annotations

import json
from collections.abc import Sequence

from common import CommandLog, markdown_table, mean_std
from meddistill_dataset import DatasetResult, LiveComparison
from meddistill_plan import TEACHER, Plan


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
