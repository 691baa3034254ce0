"""bench_recipes.py's jobs: one training command (+ its evaluation) each, run a few at a time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from common import CommandLog, load_average
from recipes_plan import BASELINE, TEACHER, VARIANTS, Plan

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


def build_jobs(work: Path, plan: Plan, datasets: Sequence[str], methods: Sequence[str]) -> list[Job]:
    """Every data set's teacher, then every (seed, data set, method), then the variants the same way.
    Runs start in this order (a run waiting for its teacher lets the next ones start), so a time
    limit cuts the last seeds of both data sets, and the variants first."""
    jobs: list[Job] = []
    first_seed = plan.seeds[0]
    for dataset in datasets:
        settings = plan.settings[dataset]
        jobs.append(Job(dataset, TEACHER, first_seed, work / "runs" / f"{dataset}_teacher", (
            "-m", "medistill", "train", "--data", str(work / dataset), *plan.teacher.arguments(),
            *settings.arguments(settings.teacher_epochs), "--seed", str(first_seed),
            "--out", str(work / "runs" / f"{dataset}_teacher"))))
    for variants in (False, True):
        jobs += [method_job(work, plan, dataset, method, seed) for seed in plan.seeds for dataset in datasets
                 for method in methods if (method in VARIANTS) == variants and seed in plan.seeds_of(method)]
    return jobs


def method_job(work: Path, plan: Plan, dataset: str, method: str, seed: int) -> Job:
    """The run of ``method`` (BASELINE or a recipe) on ``dataset`` with ``seed``."""
    settings = plan.settings[dataset]
    run_dir = work / "runs" / f"{dataset}_{method}_s{seed}"
    common = ["--data", str(work / dataset), *plan.student.arguments(),
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
