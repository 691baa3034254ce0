"""bench_label_free.py's section of RESULTS.md: tables, label-free model selection, acceptance, notes.

:func:`correlation` and :func:`acceptance` turn the run records into the published
figures (issue 11's acceptance checks); the ``*_table`` functions render them as Markdown;
:func:`section_body` and :func:`section_notes` are the section's text.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from common import markdown_table, spearman
from figures import finite, fmt, mean, mean_sd
from label_free_plan import TEACHER, Plan, Row


def quality_table(results: dict, rows: list[Row], seeds: Sequence[int]) -> str:
    headers = ["set", "boxes", "row", "test Dice mean ± std (seeds)", "per seed", "HD95 px mean ± std",
               "label-free score (best val Dice)", "collapsed", "train s / run"]
    table = []
    for name, by_kind in results["sets"].items():
        for kind, block in by_kind.items():
            base = block.get("baselines", {})
            for label, key in (("boxes as masks", "boxes"), (f"teacher {TEACHER} (> 0.5)", "teacher")):
                if key in base:
                    table.append([name, kind, label, fmt(base[key]["dice"]), "–", fmt(base[key]["hd95"], 1),
                                  "–", "–", "–"])
            for row in rows:
                runs = [block["runs"].get(f"{row.key}_s{s}") for s in seeds]
                runs = [r for r in runs if r]
                if not runs:
                    failed = [block.get("failed", {}).get(f"{row.key}_s{s}") for s in seeds]
                    if any(failed):
                        table.append([name, kind, row.label, "failed: " + next(f for f in failed if f)[:120],
                                      "", "", "", "", ""])
                    continue
                dice = [r["dice"] for r in runs]
                collapsed = [r for r in runs if r.get("collapsed")]
                table.append([
                    name, kind, row.label, mean_sd(dice), " / ".join(fmt(d) for d in dice),
                    mean_sd([r["hd95"] for r in runs], 1),
                    "(masks) " + mean_sd([r.get("best_val_dice") for r in runs]) if row.kind == "supervised"
                    else mean_sd([r.get("best_val_dice") for r in runs]),
                    "–" if row.kind == "supervised" else f"{len(collapsed)} of {len(runs)}",
                    f"{mean([r['train_seconds'] for r in runs if r['train_seconds'] > 0]):.0f}"])
    return markdown_table(headers, table)


def label_free_runs(results: dict) -> list[tuple[str, str, dict]]:
    """Every MedDistill run (not supervised) with its set and boxes kind."""
    found = []
    for name, by_kind in results["sets"].items():
        for kind, block in by_kind.items():
            for run in block["runs"].values():
                if run["kind"] != "supervised":
                    found.append((name, kind, run))
    return found


def correlation(results: dict) -> dict:
    runs = label_free_runs(results)
    groups = {"all runs": runs}
    for name in results["sets"]:
        groups[name] = [r for r in runs if r[0] == name]
    out = {}
    for label, group in groups.items():
        rho, p, n = spearman([r[2].get("best_val_dice") for r in group], [r[2]["dice"] for r in group])
        out[label] = {"rho": rho, "p": p, "n": n}
    return out


def correlation_table(corr: dict) -> str:
    return markdown_table(["runs", "Spearman ρ (label-free score vs test Dice)", "p-value", "runs (n)"],
                          [[k, fmt(v["rho"]), fmt(v["p"], 4) if v["p"] is not None else "–", v["n"]]
                           for k, v in corr.items()])


def acceptance(results: dict, seeds: Sequence[int]) -> dict:
    checks = {}
    for name, by_kind in results["sets"].items():
        for kind, block in by_kind.items():
            base = block.get("baselines", {})
            default = [block["runs"].get(f"default_s{s}") for s in seeds]
            supervised = [block["runs"].get(f"supervised_s{s}") for s in seeds]
            if not base or not all(default):
                continue
            dice = [r["dice"] for r in default]
            teacher_dice, boxes_dice = base["teacher"]["dice"], base["boxes"]["dice"]
            sup = mean([r["dice"] for r in supervised if r])
            checks[f"{name}/{kind}"] = {
                "set": name, "kind": kind, "default_mean": mean(dice), "teacher": teacher_dice,
                "boxes": boxes_dice, "beats_teacher_and_boxes": mean(dice) >= max(teacher_dice, boxes_dice),
                "min_seed": min(dice), "no_seed_collapses": all(d >= 0.8 * teacher_dice for d in dice),
                "collapse_check_fired": sum(1 for r in default if r.get("collapsed")),
                "supervised_mean": sup, "fraction_of_supervised": mean(dice) / sup if finite(sup) and sup > 0
                else float("nan"),
            }
    kinds = sorted({c["kind"] for c in checks.values()})
    over = {kind: [c["set"] for c in checks.values() if c["kind"] == kind
                   and finite(c["fraction_of_supervised"]) and c["fraction_of_supervised"] >= 0.85]
            for kind in kinds}
    return {"per_set": checks, "sets_at_85_percent_of_supervised": over,
            "two_sets_at_85_percent": {kind: len(v) >= 2 for kind, v in over.items()}}


def yes(flag: bool) -> str:
    return "**yes**" if flag else "no"


def acceptance_table(acc: dict) -> str:
    headers = ["set / boxes", "new default mean Dice", "max(teacher, boxes as masks)", "≥ ?",
               "lowest seed / 0.8 × teacher", "every seed ≥ 0.8 × teacher?", "collapse check fired",
               "supervised mean", "default / supervised", "≥ 85 %?"]
    rows = []
    for key, c in acc["per_set"].items():
        rows.append([key, fmt(c["default_mean"], 4), fmt(max(c["teacher"], c["boxes"]), 4),
                     yes(c["beats_teacher_and_boxes"]), f"{fmt(c['min_seed'], 4)} / {fmt(0.8 * c['teacher'], 4)}",
                     yes(c["no_seed_collapses"]), c["collapse_check_fired"], fmt(c["supervised_mean"]),
                     f"{100 * c['fraction_of_supervised']:.0f} %" if finite(c["fraction_of_supervised"]) else "–",
                     yes(finite(c["fraction_of_supervised"]) and c["fraction_of_supervised"] >= 0.85)])
    lines = [markdown_table(headers, rows), ""]
    for kind, ok in acc["two_sets_at_85_percent"].items():
        sets = acc["sets_at_85_percent_of_supervised"][kind]
        lines.append(f"- {kind} boxes: ≥ 85 % of supervised on at least two sets? {yes(ok)} "
                     f"({', '.join(sets) or 'none'})")
    return "\n".join(lines)


def students_table(students: dict) -> str:
    if not students:
        return "(not run)"
    lat = students.get("latency", {})
    ms = lat.get("ms", {})
    teacher_ms = ms.get("teacher", float("nan"))
    rows, fast = [], {}
    for key, info in students["runs"].items():
        student_ms = ms.get(key, float("nan"))
        speedup = teacher_ms / student_ms if finite(student_ms) and finite(teacher_ms) else float("nan")
        if finite(speedup) and speedup >= 50:
            fast[key] = info["dice"]
        rows.append([key, f"`{info['student']}` {json.dumps(info['options'])}", f"{info['params']:,}",
                     fmt(info["dice"]), fmt(student_ms, 1), f"{speedup:.0f}×" if finite(speedup) else "–",
                     yes(finite(speedup) and speedup >= 50)])
    rows.append([f"teacher {TEACHER}", f"encoder + decoder, {lat.get('boxes_per_image', 0):.1f} boxes/image", "–",
                 "–", fmt(teacher_ms, 0), "1×", "–"])
    best = max(fast, key=lambda k: fast[k]) if fast else None
    return (markdown_table(["student", "network", "parameters", f"test Dice (seed {students.get('seed')})",
                            "CPU ms/image (batch 1, median)", "speed-up vs teacher", "≥ 50×?"], rows)
            + f"\n\n{lat.get('images', 0)} test images with boxes × {students.get('repeats')} passes, models "
              f"interleaved per image after a warm-up pass; load (1 min) {lat.get('load', '?')}. Best test Dice "
              f"among the students at least 50× faster than the teacher: {best or 'none'} (the teacher alone, "
              "without a detector: against detector + teacher the speed-ups are larger).")


def planned_table(plan_lines: list[list]) -> str:
    return markdown_table(["set", "boxes kinds", "trained rows × seeds", "training runs"], plan_lines)


def section_body(results: dict, rows: list[Row], seeds: Sequence[int]) -> str:
    parts = ["Test Dice of every row (mean ± sample std over the seeds; per seed in order of the seeds):", "",
             quality_table(results, rows, seeds), "",
             "Label-free model selection: Spearman rank correlation between each MedDistill run's label-free "
             "score (`best_val_dice` in its summary.json: student–teacher agreement on its held-out "
             "distillation images) and its test Dice (the supervised runs are left out: their score uses masks):",
             "", correlation_table(results.get("correlation", {})), "",
             "Acceptance (issue 11):", "", acceptance_table(results.get("acceptance", {"per_set": {},
                                                                                       "two_sets_at_85_percent": {},
                                                                                       "sets_at_85_percent_of_supervised": {}})),
             "", "Students (default recipe, ground-truth boxes):", "", students_table(results.get("students", {}))]
    return "\n".join(parts)


def section_notes(results: dict, rows: list[Row], seeds: Sequence[int], plan: Plan, plan_lines: list,
                  pending: Sequence[str], args: argparse.Namespace) -> str:
    lines = []
    if pending:
        lines += [f"**Partial run: not done yet when this section was written: {', '.join(pending)}. The same "
                  "command with `--work DIR --resume` continues it.**", ""]
    lines.append("Data sets:")
    for name, text in results["descriptions"].items():
        caches = {k: v.get("cache_seconds") for k, v in results["sets"].get(name, {}).items()}
        lines.append(f"- **{name}**: {text}. Teacher cache wall s: {json.dumps(caches)}.")
    overrides = "; ".join(f"{r.key}: `{json.dumps(r.overrides)}`" for r in rows if r.overrides)
    lines += [
        "",
        f"Every trained row: student `{plan.student}` `{json.dumps(plan.student_options)}`, {plan.sizes_text()}, "
        f"batch {plan.batch}, validation fraction {plan.val_fraction}, seeds "
        f"{' '.join(map(str, seeds))} (the seed sets the initial weights, the validation split and the "
        "augmentation); MedDistill runs: `MedDistillConfig` defaults (lr, patience, `min_epochs`, "
        "`min_steps_per_epoch`, ...) except for each row's overrides, `keep_collapsed=True`, the teacher cache "
        f"of the set and boxes kind (`cache`). Overrides: {overrides}. The supervised bound: "
        "`medistill.train.supervised.train_supervised(TrainConfig(...))` with the same student, size, epochs, "
        "batch and seed on the distillation images with their masks (its own defaults otherwise; an epoch is one "
        "pass, where MedDistill repeats a small set to at least `min_steps_per_epoch` steps; it uses no boxes, so one run "
        "per seed is listed under every boxes kind).",
        "",
        "Rows without training: boxes as masks = every pixel whose centre lies in a box; teacher = LiteMedSAM "
        "prompted with the boxes of each test image, the cached fused soft mask (max over the boxes) > 0.5. "
        "Dice and HD95 (pixels, original resolution, `medistill.evaluate.metrics.binary_metrics`) per test "
        "image, averaged per run; Dice 1 where both masks are empty, HD95 only where both are non-empty. "
        "\"collapsed\": how many seeds' runs the trainer's collapse check flagged (kept, not rerun).",
    ]
    if args.ablation_seeds and args.ablation_seeds < len(seeds):
        lines += ["", f"`--ablation-seeds {args.ablation_seeds}`: the ablation rows and `rounds=2` ran with the first "
                  f"{args.ablation_seeds} seed(s) only (their ± is over those); the released, default and "
                  "supervised rows with every seed."]
    if getattr(args, "missing_sets", None):
        lines += ["", "Data sets: " + "; ".join(args.missing_sets) + "."]
    if results["settings"].get("row_notes"):
        lines += ["", "Rows not run: " + "; ".join(results["settings"]["row_notes"]) + "."]
    trained = results["settings"].get("train_detector") or []
    if not results["settings"].get("detector_boxes"):
        lines += ["", "Detector boxes: none given (`--detector-boxes SET=DIR` or `--train-detector SET`), so every "
                  "row uses ground-truth boxes."]
    elif trained:
        from label_free_detector import DESCRIPTION

        lines += ["", f"Detector boxes of {', '.join(trained)}: {DESCRIPTION}. Commands and output: "
                  "`WORK/SET/detector/detector.log`."]
    students = results.get("students") or {}
    if students:
        lines += ["", f"Students: trained on {students.get('set')} with the default recipe and ground-truth boxes, "
                  f"seed {students.get('seed')}, same size and epochs; latency = `load_predictor(run).predict(image)` "
                  "(preprocessing, forward at batch 1, back to the image size) and LiteMedSAM "
                  "`teacher.predict(image, boxes)` (image encoder + mask decoder of the image's boxes; no detector), "
                  "interleaved image by image in one loop, medians."]
    lines += ["", "Planned runs:", "", planned_table(plan_lines), "",
              f"Load (1 min): {results['load']['start']:.2f} at the start, {results['load'].get('now', 0):.2f} when "
              f"this was written; {results.get('elapsed_minutes', 0)} min in this process. Per-seed figures, "
              "per-image metrics and the settings: `WORK/results.json` (`--work`)."]
    return "\n".join(lines)
