"""bench_recipes.py's latency measurement, results table and notes for RESULTS.md."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import CommandLog, Timing, markdown_table, time_runs
from figures import finite, mean_sd
from recipes_figures import acceptance_lines, flattening, validation_curve
from recipes_jobs import Outcome
from recipes_plan import BASELINE, CURVES_PNG, METHODS, SIKD_TEACHER, TEACHER, VARIANTS, Plan

# ---------------------------------------------------------------------------
# Latency and parameters of the exported models (in this process)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCost:
    """Parameters of an exported model and its batch-1 forward time."""

    params: int
    timing: Timing


def measure_model(model_file: Path, img_size: int, repeats: int) -> ModelCost:
    """Load ``model_file`` (a ``.keras`` file) and time ``model(x, training=False)`` at batch 1."""
    import keras
    import numpy as np
    import tensorflow as tf

    import medistill.networks  # noqa: F401  (registers the custom layers for loading)

    model = keras.saving.load_model(str(model_file), compile=False)
    channels = int(model.inputs[0].shape[-1])
    image = tf.constant(np.random.default_rng(0).random((1, img_size, img_size, channels), dtype=np.float32))
    forward = tf.function(lambda x: model(x, training=False))
    timing = time_runs(lambda: tf.nest.map_structure(lambda t: t.numpy(), forward(image)), repeats, warmup=3,
                       min_repeats=10, budget_seconds=10.0)
    cost = ModelCost(int(model.count_params()), timing)
    keras.backend.clear_session()
    return cost


def measure_costs(outcomes: dict[str, Outcome], plan: Plan, work: Path) -> dict[tuple[str, str], ModelCost]:
    """Cost of the teacher, the SIKD teacher and the first successful run of every method."""
    models: dict[tuple[str, str], Path] = {}
    for outcome in outcomes.values():
        job = outcome.job
        if outcome.error or (job.dataset, job.method) in models:
            continue
        models[(job.dataset, job.method)] = job.run_dir / "model.keras"
        sikd_teacher = job.run_dir / "teacher" / "model.keras"
        if job.method == "sikd" and sikd_teacher.is_file():
            models[(job.dataset, SIKD_TEACHER)] = sikd_teacher
    costs = {}
    for (dataset, method), path in models.items():
        costs[(dataset, method)] = measure_model(path, plan.settings[dataset].img_size, plan.latency_repeats)
        print(f"{dataset} {method}: {costs[(dataset, method)].params:,} params, "
              f"{costs[(dataset, method)].timing.median * 1e3:.1f} ms", flush=True)
    return costs


# ---------------------------------------------------------------------------
# Tables and notes
# ---------------------------------------------------------------------------


def _seed_figures(runs: Sequence[Outcome]) -> list[float]:
    return [r.dice for r in runs if not r.error and r.dice is not None]


def _mean_over_seeds(values: Sequence[float]) -> str:
    """:func:`figures.mean_sd` with the number of runs: ``0.812 (1 run)``, ``0.812 ± 0.010 (n = 3)``."""
    n = sum(finite(v) for v in values)
    return mean_sd(values) + ("" if n == 0 else " (1 run)" if n == 1 else f" (n = {n})")


def _class_dice(runs: Sequence[Outcome]) -> str:
    """Per-class Dice (mean over seeds) when the runs are multi-class, else ``–``."""
    done = [r for r in runs if not r.error and r.eval_summary]
    metrics = [r.eval_summary["metrics"] for r in done]
    names = sorted(k for k in (metrics[0] if metrics else {}) if k.startswith("dice_c"))
    if not names:
        return "–"
    return " / ".join(f"{name[len('dice_'):]} {statistics.mean(m[name]['mean'] for m in metrics):.3f}"
                      for name in names)


def _load_range(runs: Sequence[Outcome]) -> str:
    loads = [value for r in runs for value in r.loads if value == value]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else "–"


def _cost_cells(cost: ModelCost | None, summary_params: object) -> list[str]:
    params = cost.params if cost else summary_params
    params_cell = f"{params:,}" if isinstance(params, int) else "–"
    return [params_cell, f"{cost.timing.median * 1e3:.1f}" if cost else "–"]


def results_table(outcomes: dict[str, Outcome], costs: dict[tuple[str, str], ModelCost],
                  datasets: Sequence[str], methods: Sequence[str], plan: Plan) -> str:
    """One row per (data set, model): the teachers, then the student without and with each recipe."""
    headers = ["data set", "method", "network", "params", "test Dice, mean ± std over seeds", "Dice per seed",
               "Δ vs no distillation", "per-class Dice (mean over seeds)", "CPU latency ms (batch 1, median)",
               "train time s (mean)", "load (1 min) min–max"]
    rows = []
    for dataset in datasets:
        by_method = {m: [o for o in outcomes.values() if o.job.dataset == dataset and o.job.method == m]
                     for m in (TEACHER, *methods)}
        baseline = _seed_figures(by_method.get(BASELINE, []))
        for method in (TEACHER, *methods):
            runs = by_method[method]
            dice = _seed_figures(runs)
            network = plan.teacher if method == TEACHER else plan.student
            delta = (f"{statistics.mean(dice) - statistics.mean(baseline):+.3f}"
                     if dice and baseline and method not in (TEACHER, BASELINE) else "")
            failed = [f"seed {r.job.seed}: {r.error.splitlines()[0][:80]}" for r in runs if r.error]
            per_seed = ", ".join(f"{d:.3f}" for d in dice) + ("; " if dice and failed else "") + "; ".join(failed)
            times = [r.train_seconds for r in runs if not r.error and r.train_seconds == r.train_seconds]
            summary_params = next((r.run_summary.get("params") for r in runs if r.run_summary), None)
            rows.append([dataset, "teacher (shared)" if method == TEACHER else method, network.label,
                         *_cost_cells(costs.get((dataset, method)), summary_params)[:1],
                         _mean_over_seeds(dice), per_seed or "not run", delta, _class_dice(runs),
                         _cost_cells(costs.get((dataset, method)), summary_params)[1],
                         f"{statistics.mean(times):.0f}" if times else "–", _load_range(runs)])
        sikd_teacher = costs.get((dataset, SIKD_TEACHER))
        if sikd_teacher:
            rows.append([dataset, "sikd teacher (class-wise averaged images)", plan.student.label,
                         *_cost_cells(sikd_teacher, None)[:1], "not evaluated (its inputs are averaged images)",
                         "", "", "", _cost_cells(sikd_teacher, None)[1], "in sikd seed "
                         f"{plan.seeds[0]}'s time", ""])
    return markdown_table(headers, rows)


def method_notes(descriptions: dict[str, str], plan: Plan, commands: CommandLog, total_seconds: float,
                 workers: int, outcomes: dict[str, Outcome], not_started: Sequence[str], finished: bool) -> str:
    """Data sets, settings, what was cut, failures and every command, for the RESULTS.md section."""
    lines = []
    limited = [f"*{name}* seed(s) {', '.join(map(str, plan.seeds_of(name)))} only" for name in VARIANTS
                   if plan.seeds_of(name) != plan.seeds and any(o.job.method == name for o in outcomes.values())]
    variant_seeds = "same seeds" + (f", except {'; '.join(limited)}" if limited else "")
    if not finished:
        lines += [f"**Partial:** {len(outcomes)} runs finished so far; the script is still running.", ""]
    lines.append("Data sets:")
    for name, text in descriptions.items():
        s = plan.settings[name]
        lines.append(f"- **{name}**: {text}. Students: `{' '.join(s.arguments(s.epochs))}`; teacher: "
                     f"{s.teacher_epochs} epochs; the trainers' defaults otherwise (AdamW, cosine schedule, "
                     "augmentation on).")
    lines += [
        "",
        f"Every row but the teachers is the same student, {plan.student.label}, trained with seeds "
        f"{', '.join(map(str, plan.seeds))}: *baseline* by `medistill train` (no teacher), the others by "
        "`medistill distill` with the recipe's default options (KAMSD and CAKD+MSKD add "
        "`deep_supervision: true` to the student, as their recipes do, and so does SSCD; "
        "the heads are small 1×1 convolutions, which the params column shows when the export keeps them; CAKD+MSKD's own default student, "
        "`lcovnet`, is replaced by the same U-Net so that every row compares like with like). The baseline "
        "has no deep-supervision heads (`medistill train` trains them when a student has them). The shared "
        f"teacher, {plan.teacher.label}, is trained once per data set by `medistill train` (seed "
        f"{plan.seeds[0]}; all its heads trained) and passed with `--teacher-model` to KAMSD, CAKD+MSKD"
        + (" and SSCD" if plan.labelled_fraction == 1.0 else "") + "; SIKD's teacher "
        "is trained on class-wise averaged images by SIKD's first run (`--train-teacher`); it is the "
        "student's network, because SIKD matches the penultimate features channel by channel (the recipe "
        "refuses a teacher of another width), and passed to its later seeds with `--teacher-model RUN/teacher`. "
        + (f"SSCD runs with `--labelled-fraction {plan.labelled_fraction}`: every training mask is used, as by "
           "every other row (equal data; its unlabelled stream is then the same images without their masks), "
           "so it distils the shared teacher instead of training its stage 0 on a labelled part."
           if plan.labelled_fraction == 1.0 else
           f"SSCD uses `--labelled-fraction {plan.labelled_fraction}` and trains its own teacher (stage 0) "
           "on the labelled part in every run (`--train-teacher`), because that part depends on the seed.")
        + " Train times include the teachers trained inside a run.",
        "",
        "Dice is the `summary.metrics.dice` mean of the `metrics.json` that `predict_eval.py --vis_dir` "
        "writes for each run (over the test images, at their original resolution); the table gives the "
        "mean ± sample std of those per-run means over the seeds, and Δ is the difference of the means "
        "against the baseline. Latency: the run's `model.keras` loaded in the benchmark process, "
        "`model(x, training=False)` in a `tf.function` on one random image at the working size, median "
        "of up to "
        f"{plan.latency_repeats} calls after 3 warm-up calls, measured after all training, one model at a "
        "time (CPU only). Params are those of the exported model.",
        "",
        f"Variants (after every recipe at its defaults, {variant_seeds}): *sikd-noclip* is SIKD with "
        "`--recipe-options '{\"clip_norm\": 0.0}'` (no gradient clipping; the default clips the global norm "
        "at 1.0, as the released code does), reusing SIKD's teacher; *sscd-exchange* is SSCD with "
        "`'{\"patch_exchange\": true}'`, with the same teacher as *sscd*"
        + (" (the shared one)" if plan.labelled_fraction == 1.0 else " (`--teacher-model RUN_sscd/teacher`: the same seed's stage 0)")
        + ", so it differs from *sscd* only by the exchange; *kamsd-1scale* is KAMSD with `'{\"scales\": 1}'` "
        "(deep supervision, boundary head and output distillation on the main logits only; adapters unchanged); "
        "*kamsd-noadapter* (`adapter_weight` 0) and *kamsd-noboundary* (`boundary` false) drop one KAMSD term each; "
        "*sikd-fw0.5* is SIKD with `feature_weight` 0.5 instead of 2; *sikd-dice* adds the Dice term to SIKD's CE (`dice` true); *sscd-nocurriculum* trains SSCD's finest head "
        "alone from the first epoch (`curriculum` false, the default since 5ba730b); *sscd-curriculum* is the "
        "paper's coarse-to-fine curriculum (`curriculum` true); *kamsd-main* is KAMSD on the main head only "
        "(`scales` 1: its supervision and temperature distillation; the adapters kept) without the boundary "
        "head (`boundary` false); *cakd-mskd-main* gives CAKD+MSKD's whole Dice, CAKD and MSKD weight to the main "
        "head (`scale_weights` [1.0]).",
        "",
        "Cut for time (the whole script is sized for about 60 minutes on 2 shared CPU cores): "
        f"{plan.phantom_counts[0]} training phantoms and one MNI152 slice in {plan.mni152_train_step}, "
        "the small sizes and epochs listed above (the validation curves below show the baseline flat at the "
        "end: the cosine schedule has brought the rate to 1 % by then), "
        "tiny students and a small teacher, one shared teacher per data set, "
        f"{len(plan.seeds)} seed(s), recipe options at their defaults (no tuning beyond the variants). "
        f"{workers} runs at a time, so train times include sharing the CPU with another run and with "
        "the machine's other work (see the load column); compare Dice, not seconds.",
    ]
    dice = {}
    for outcome in outcomes.values():
        if not outcome.error and outcome.dice is not None:
            dice.setdefault((outcome.job.dataset, outcome.job.method), []).append(outcome.dice)
    verdicts = acceptance_lines(dice, list(descriptions), [m for m in METHODS if m not in (BASELINE,)])
    if verdicts:
        lines += ["", "Mean test Dice over seeds against the baseline's (Δ, recipe − baseline):", *verdicts]
    gains = [f"{o.job.dataset} seed {o.job.seed}: {flattening(validation_curve(o.job.run_dir)):+.3f}"
             for o in outcomes.values() if o.job.method == BASELINE and not o.error]
    if gains:
        lines += ["", "Baseline flattening (validation Dice: best of the last 5 epochs − the epoch before "
                  "them): " + "; ".join(gains) + f". Curves of every run: `{CURVES_PNG.name}`, beside this file."]
    resumed = sorted(o.job.name for o in outcomes.values() if o.resumed)
    if resumed:
        lines += ["", "Resumed runs (interrupted once, then continued from their last epoch checkpoint by the "
                  "same command; their train time covers only the part after the restart): "
                  + ", ".join(f"`{name}`" for name in resumed) + "."]
    failures = [o for o in outcomes.values() if o.error]
    if failures or not_started:
        lines += ["", "Runs that gave no figures:"]
        for outcome in failures:
            lines += [f"- `{outcome.job.name}`: {outcome.error.splitlines()[0]}"]
            tail = outcome.error.strip().splitlines()[1:][-12:]
            lines += ["", "  ```text", *(f"  {line}" for line in tail), "  ```"] if tail else []
        lines += [f"- `{name}`: not started (time limit `--deadline-minutes`)" for name in not_started]
    lines += [
        "",
        f"Whole script: {total_seconds / 60:.1f} min. Commands, in the order they started (`$WORK` is the "
        "`--work` folder, by default a temporary one):",
        "",
        "```bash",
        *commands.lines,
        "```",
    ]
    return "\n".join(lines)
