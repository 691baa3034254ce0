"""Distillation recipes against the same student trained without distillation, through the CLI.

For each data set: one teacher trained with ``python -m medistill train`` (seed 0), shared
by KAMSD and CAKD+MSKD through ``--teacher-model``; then, for each seed, the student without
distillation (``medistill train``) and with each recipe (``medistill distill --recipe
...``), all evaluated by ``predict_eval.py`` on the same held-out test images. SIKD's
teacher sees class-wise averaged images and must be the student's network (its
penultimate features are matched channel by channel), so it is trained by SIKD's
first-seed run (``--train-teacher``) and reused by its other seeds; SSCD's teacher (its stage 0) may see
only the labelled part of the training images, which depends on the seed, so every SSCD
run trains its own (``--train-teacher``). Data sets: binary phantoms (train
seed 0, test seed 1) and the ``mni152`` label map (0 background, 1 grey matter, 2 white
matter; a contiguous block of axial slices held out). After the recipes at their defaults,
two variants run: SIKD without gradient clipping (``clip_norm: 0``, reusing SIKD's teacher)
and SSCD with the hard-patch exchange (``patch_exchange: true``, reusing the same seed's
SSCD teacher). Finally, the batch-1 CPU latency of every exported model is measured in this
process, one model at a time, and the validation-Dice curves of every run are drawn
(``benchmarks/recipes_curves.png``).

    .venv/bin/python benchmarks/bench_recipes.py [--quick] [--datasets mni152 phantoms]
        [--methods baseline kamsd cakd-mskd sikd sscd sikd-noclip sscd-exchange] [--jobs 2]
        [--deadline-minutes M] [--work DIR [--resume]]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from recipes_figures import acceptance_lines, draw_curves, flattening, validation_curve

from common import (CommandLog, Timing, argument_parser, command_line, copy_pairs, exported_stems,
                    load_average, markdown_table, publish, results_path, section_text,
                    slice_index, time_runs, write_section)

SECTION_KEY = "recipes"
SECTION_TITLE = "Distillation recipes against the undistilled student (`medistill distill` + `predict_eval.py`)"
BASELINE = "baseline"
TEACHER = "teacher"
SIKD_TEACHER = "sikd teacher"
RECIPES = ("kamsd", "cakd-mskd", "sikd", "sscd")
# Variants run after every recipe at its defaults: (recipe, --recipe-options, the run whose teacher they reuse)
VARIANTS = {"sikd-noclip": ("sikd", {"clip_norm": 0.0}), "sscd-exchange": ("sscd", {"patch_exchange": True})}
METHODS = (BASELINE, *RECIPES, *VARIANTS)
CURVES_PNG = Path(__file__).resolve().parent / "recipes_curves.png"


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    """A network name and its builder options."""

    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Name plus options, for tables."""
        return f"`{self.name}` {json.dumps(self.options)}" if self.options else f"`{self.name}`"


@dataclass(frozen=True)
class DataSettings:
    """Training options of one data set (students; the teacher gets ``teacher_epochs``)."""

    img_size: int
    epochs: int
    teacher_epochs: int
    batch: int
    val_fraction: float

    def arguments(self, epochs: int) -> list[str]:
        """As command-line arguments, with ``epochs`` epochs."""
        return ["--img-size", str(self.img_size), "--epochs", str(epochs), "--batch", str(self.batch),
                "--val-fraction", str(self.val_fraction)]


@dataclass(frozen=True)
class Plan:
    """Everything that differs between a full and a quick run."""

    settings: dict[str, DataSettings]
    student: Network
    teacher: Network
    seeds: tuple[int, ...]
    labelled_fraction: float  # SSCD
    phantom_counts: tuple[int, int, int]  # train, test, size in px
    mni152_test_slices: int
    mni152_gap: int
    mni152_train_step: int
    latency_repeats: int


FULL = Plan(  # sized from single runs on the loaded 2-core machine: ~1 min start-up + ~3 s per student epoch
    settings={"phantoms": DataSettings(img_size=64, epochs=20, teacher_epochs=25, batch=8, val_fraction=0.2),
              "mni152": DataSettings(img_size=64, epochs=20, teacher_epochs=25, batch=8, val_fraction=0.2)},
    student=Network("unet", {"base_filters": 8}),
    teacher=Network("unet", {"base_filters": 16, "deep_supervision": True}),
    seeds=(0, 1, 2), labelled_fraction=1.0,
    phantom_counts=(60, 30, 64),
    mni152_test_slices=20, mni152_gap=5, mni152_train_step=2,
    latency_repeats=50,
)
QUICK = Plan(
    settings={"phantoms": DataSettings(img_size=64, epochs=1, teacher_epochs=1, batch=4, val_fraction=0.25),
              "mni152": DataSettings(img_size=64, epochs=1, teacher_epochs=1, batch=4, val_fraction=0.25)},
    student=Network("unet", {"base_filters": 4, "depth": 2}),
    teacher=Network("unet", {"base_filters": 4, "depth": 2, "deep_supervision": True}),
    seeds=(0,), labelled_fraction=1.0,
    phantom_counts=(12, 4, 64),
    mni152_test_slices=4, mni152_gap=4, mni152_train_step=10,
    latency_repeats=5,
)
DEFAULT_DATASETS = ("mni152", "phantoms")


# ---------------------------------------------------------------------------
# Data sets: each builder writes ROOT/train/{images,masks} and ROOT/test/{images,masks}
# ---------------------------------------------------------------------------


def prepare_phantoms(root: Path, plan: Plan, commands: CommandLog) -> str:
    """Binary phantoms, every one with lesions: train with seed 0, test with seed 1."""
    n_train, n_test, size = plan.phantom_counts
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        commands.run(["-m", "medistill", "phantoms", "--out", str(root / split), "--n", str(n),
                      "--size", str(size), "--seed", str(seed), "--lesion-probability", "1.0",
                      "--overwrite"], root / f"phantoms_{split}.log")
    return (f"{n_train} train phantoms (seed 0) / {n_test} test phantoms (seed 1), {size} px, "
            "binary lesion masks, every phantom with lesions (`--lesion-probability 1.0`, so that "
            "Dice measures outlines, not the luck of empty predictions on negatives)")


def prepare_mni152(root: Path, plan: Plan, commands: CommandLog) -> str:
    """MNI152 grey/white-matter label map: a contiguous block of axial slices is the test set."""
    export = root.parent / "mni152_labels_export"
    commands.run(["-m", "medistill", "sources", "--name", "mni152", "--out", str(export), "--overwrite"],
                 root.parent / "mni152_labels_export.log")
    stems = sorted(exported_stems(export), key=slice_index)
    first = len(stems) // 2 - plan.mni152_test_slices // 2
    test = stems[first:first + plan.mni152_test_slices]
    low, high = slice_index(test[0]) - plan.mni152_gap, slice_index(test[-1]) + plan.mni152_gap
    train = [s for s in stems if not low <= slice_index(s) <= high][::plan.mni152_train_step]
    copy_pairs(export, train, root / "train")
    copy_pairs(export, test, root / "test")
    return (f"ICBM152 2009 T1 axial slices (233×197 px) with the exported label map 0 background / "
            f"1 grey matter / 2 white matter (`medistill sources --name mni152`, no `--binary`); "
            f"test = {len(test)} contiguous slices z{slice_index(test[0])}–z{slice_index(test[-1])}, the "
            f"slices within {plan.mni152_gap} of that block unused, train = one in "
            f"{plan.mni152_train_step} of the remaining slices ({len(train)} slices). Dice is "
            "`predict_eval.py`'s mean foreground Dice (grey and white matter averaged per image)")


DATASET_BUILDERS: dict[str, Callable[[Path, Plan, CommandLog], str]] = {
    "phantoms": prepare_phantoms,
    "mni152": prepare_mni152,
}


# ---------------------------------------------------------------------------
# Jobs: one training command (+ its evaluation) each
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One training run: the command, its folder, and the runs it must wait for."""

    dataset: str
    method: str  # TEACHER, BASELINE or a recipe
    seed: int
    run_dir: Path
    arguments: tuple[str, ...]
    after: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Unique name, ``dataset/method/seed``."""
        return f"{self.dataset}/{self.method}/{self.seed}"


@dataclass
class Outcome:
    """What one job gave: figures, or the error that stopped it."""

    job: Job
    train_seconds: float = float("nan")
    eval_seconds: float = float("nan")
    run_summary: dict = field(default_factory=dict)
    eval_summary: dict = field(default_factory=dict)
    loads: tuple[float, float] = (float("nan"), float("nan"))
    error: str = ""
    resumed: bool = False  # the run folder held an unfinished run of this job: training went on from it

    @property
    def dice(self) -> float | None:
        """Mean test Dice of this run (mean foreground Dice for label maps)."""
        return self.eval_summary.get("metrics", {}).get("dice", {}).get("mean")


def _network_arguments(flag: str, network: Network) -> list[str]:
    return [f"--{flag}", network.name, f"--{flag}-options", json.dumps(network.options)]


def build_jobs(work: Path, plan: Plan, datasets: Sequence[str], methods: Sequence[str]) -> list[Job]:
    """For each data set in turn: its teacher, then every (seed, method). Runs start in this order
    (a run waiting for its teacher lets the next ones start), so a time limit cuts the last data set."""
    jobs: list[Job] = []
    first_seed = plan.seeds[0]
    for dataset in datasets:
        settings = plan.settings[dataset]
        jobs.append(Job(dataset, TEACHER, first_seed, work / "runs" / f"{dataset}_teacher", (
            "-m", "medistill", "train", "--data", str(work / dataset), *_network_arguments("student", plan.teacher),
            *settings.arguments(settings.teacher_epochs), "--seed", str(first_seed),
            "--out", str(work / "runs" / f"{dataset}_teacher"))))
        jobs += [method_job(work, plan, dataset, method, seed) for seed in plan.seeds
                 for method in methods if method not in VARIANTS]
    jobs += [method_job(work, plan, dataset, method, seed) for seed in plan.seeds for dataset in datasets
             for method in methods if method in VARIANTS]
    return jobs


def method_job(work: Path, plan: Plan, dataset: str, method: str, seed: int) -> Job:
    """The run of ``method`` (BASELINE or a recipe) on ``dataset`` with ``seed``."""
    settings = plan.settings[dataset]
    run_dir = work / "runs" / f"{dataset}_{method}_s{seed}"
    common = ["--data", str(work / dataset), *_network_arguments("student", plan.student),
              *settings.arguments(settings.epochs), "--seed", str(seed), "--out", str(run_dir)]
    if method == BASELINE:
        return Job(dataset, method, seed, run_dir, ("-m", "medistill", "train", *common))
    recipe, options = VARIANTS.get(method, (method, {}))
    options_arguments = ["--recipe-options", json.dumps(options)] if options else []
    teacher = ["--teacher-model", str(work / "runs" / f"{dataset}_teacher")]
    after: tuple[str, ...] = (f"{dataset}/{TEACHER}/{plan.seeds[0]}",)
    if recipe == "sscd" and plan.labelled_fraction == 1.0:
        pass  # every mask is seen, like the shared teacher's: SSCD distils it as KAMSD and CAKD+MSKD do
    elif method == "sscd-exchange":  # the same seed's SSCD teacher (its stage 0 depends on the labelled part)
        teacher = ["--teacher-model", str(work / "runs" / f"{dataset}_sscd_s{seed}" / "teacher")]
        after = (f"{dataset}/sscd/{seed}",)
    elif method == "sscd":
        teacher = ["--train-teacher", plan.teacher.name, "--teacher-options", json.dumps(plan.teacher.options),
                   "--teacher-epochs", str(settings.teacher_epochs)]
        after = ()
    elif method == "sikd" and seed == plan.seeds[0]:  # SIKD compares penultimate features: the student's network
        teacher = ["--train-teacher", plan.student.name, "--teacher-epochs", str(settings.teacher_epochs)]
        after = ()
    elif recipe == "sikd":
        teacher = ["--teacher-model", str(work / "runs" / f"{dataset}_sikd_s{plan.seeds[0]}" / "teacher")]
        after = (f"{dataset}/sikd/{plan.seeds[0]}",)
    extra = ["--labelled-fraction", str(plan.labelled_fraction)] if recipe == "sscd" else []
    return Job(dataset, method, seed, run_dir,
               ("-m", "medistill", "distill", "--recipe", recipe, *common, *teacher, *extra, *options_arguments),
               after)


TIMING_FILE = "bench_seconds.json"


def run_job(job: Job, work: Path, commands: CommandLog) -> Outcome:
    """Train, then evaluate on ``DATASET/test`` with ``predict_eval.py``; errors are kept, not raised.

    A finished run found in ``job.run_dir`` (``summary.json``, and ``eval/metrics.json``) is
    reused; an unfinished one is resumed by the same command (the trainers resume run folders).
    """
    outcome = Outcome(job, resumed=(job.run_dir / "config.json").is_file())
    load_before = load_average()
    logs = work / "logs"
    stem = job.run_dir.name
    timing_file = job.run_dir / TIMING_FILE
    vis_dir = job.run_dir / "eval"
    evaluate = ["predict_eval.py", "--image_dir", str(work / job.dataset / "test" / "images"),
                "--mask_dir", str(work / job.dataset / "test" / "masks"), "--model_path", str(job.run_dir),
                "--vis_dir", str(vis_dir), "--num_vis", "2"]
    try:
        if not (job.run_dir / "summary.json").is_file():
            seconds = commands.run(job.arguments, logs / f"{stem}_train.log")
            timing_file.write_text(json.dumps({"train": seconds}), encoding="utf-8")
        else:  # finished earlier: listed, not rerun
            outcome.resumed = False
            commands.lines.append(commands.shown(job.arguments))
        if timing_file.is_file():
            outcome.train_seconds = json.loads(timing_file.read_text(encoding="utf-8"))["train"]
        outcome.run_summary = json.loads((job.run_dir / "summary.json").read_text(encoding="utf-8"))
        if not (vis_dir / "metrics.json").is_file():
            outcome.eval_seconds = commands.run(evaluate, logs / f"{stem}_eval.log")
        else:
            commands.lines.append(commands.shown(evaluate))
        outcome.eval_summary = json.loads((vis_dir / "metrics.json").read_text(encoding="utf-8"))["summary"]
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        outcome.error = str(error)
    outcome.loads = (load_before, load_average())
    return outcome


def run_jobs(jobs: Sequence[Job], work: Path, commands: CommandLog, workers: int, deadline: float | None,
             on_done: Callable[[dict[str, Outcome]], None]) -> tuple[dict[str, Outcome], list[str]]:
    """Run ``jobs`` ``workers`` at a time, in list order once their ``after`` jobs succeeded.

    No job starts after ``deadline`` (a ``time.monotonic()`` value). A job whose
    prerequisite failed is skipped. ``on_done`` sees the outcomes after each job.
    Returns the outcomes and the names of the jobs that never started.
    """
    outcomes: dict[str, Outcome] = {}
    pending = list(jobs)
    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for job in list(pending):
                if len(running) >= workers or (deadline is not None and time.monotonic() > deadline):
                    break
                if any(name in outcomes and outcomes[name].error for name in job.after):
                    pending.remove(job)
                    outcomes[job.name] = Outcome(job, error=f"skipped: {', '.join(job.after)} failed")
                elif all(name in outcomes for name in job.after):
                    pending.remove(job)
                    running[pool.submit(run_job, job, work, commands)] = job
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = future.result()
                outcomes[running.pop(future).name] = outcome
                figure = f"Dice {outcome.dice:.3f}" if outcome.dice is not None else outcome.error.splitlines()[0]
                print(f"[{time.strftime('%H:%M:%S')}] {outcome.job.name}: {figure}", flush=True)
            try:
                on_done(outcomes)
            except Exception as error:  # a partial report must never stop the runs
                print(f"could not write the partial section: {error!r}", flush=True)
    return outcomes, [job.name for job in pending]


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
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 run)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n = {len(values)})"


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
        "Variants (after every recipe at its defaults, same seeds): *sikd-noclip* is SIKD with "
        "`--recipe-options '{\"clip_norm\": 0.0}'` (no gradient clipping; the default clips the global norm "
        "at 1.0, as the released code does), reusing SIKD's teacher; *sscd-exchange* is SSCD with "
        "`'{\"patch_exchange\": true}'`, reusing the same seed's SSCD teacher (`--teacher-model "
        "RUN_sscd/teacher`), so it differs from *sscd* only by the exchange.",
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
                  "them): " + "; ".join(gains) + f". Curves of every run: `benchmarks/{CURVES_PNG.name}`."]
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


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main() -> None:
    """Prepare the data, run every job, measure the models and publish the section."""
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASET_BUILDERS), default=list(DEFAULT_DATASETS),
                        help=f"data sets (default: {' '.join(DEFAULT_DATASETS)})")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="baseline = the student without distillation (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (default 2)")
    parser.add_argument("--deadline-minutes", type=float, default=None,
                        help="start no run after this many minutes; publish what finished")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep data and run folders here (default: a temporary folder, deleted)")
    parser.add_argument("--resume", action="store_true",
                        help="with --work: reuse the finished runs found there and resume the unfinished ones "
                             "(without it a --work folder that already holds runs is refused)")
    args = parser.parse_args()
    if args.work is not None and (args.work / "runs").is_dir() and any((args.work / "runs").iterdir()) \
            and not args.resume:
        parser.error(f"--work {args.work} already holds runs: pass --resume to continue them, or another folder")
    if args.resume and args.work is None:
        parser.error("--resume needs --work DIR (the folder of the run to continue)")
    plan = QUICK if args.quick else FULL
    start = time.monotonic()
    deadline = start + args.deadline_minutes * 60 if args.deadline_minutes else None
    with tempfile.TemporaryDirectory(prefix="medistill-bench-recipes-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        commands = CommandLog(work)
        descriptions = {d: DATASET_BUILDERS[d](work / d, plan, commands) for d in args.datasets}
        jobs = build_jobs(work, plan, args.datasets, args.methods)

        def write_partial(outcomes: dict[str, Outcome]) -> None:
            notes = method_notes(descriptions, plan, commands, time.monotonic() - start, args.jobs, outcomes,
                                 [], finished=False)
            body = results_table(outcomes, {}, args.datasets, args.methods, plan)
            write_section(results_path(args), SECTION_KEY,
                          section_text(SECTION_KEY, SECTION_TITLE, command_line(), body, notes))

        outcomes, not_started = run_jobs(jobs, work, commands, args.jobs, deadline, write_partial)
        costs = measure_costs(outcomes, plan, work)
        curves = draw_curves([(o.job.dataset, o.job.method, o.job.seed, o.job.run_dir) for o in outcomes.values()],
                             args.datasets, [m for m in (TEACHER, *args.methods)],
                             CURVES_PNG if not args.quick else work / CURVES_PNG.name)
        print(f"validation curves: {curves}", flush=True)
    notes = method_notes(descriptions, plan, commands, time.monotonic() - start, args.jobs, outcomes,
                         not_started, finished=True)
    publish(args, SECTION_KEY, SECTION_TITLE, results_table(outcomes, costs, args.datasets, args.methods, plan),
            notes)


if __name__ == "__main__":
    main()
