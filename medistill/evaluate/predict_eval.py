"""Predict with a trained model over a folder and, given masks, measure it.

Stage 4 of MedDistill; the released evaluation's defects it avoids: docs/methods.md §1.

This is ``predict_eval.py`` / ``medistill evaluate``. The model's recorded
preprocessing is reapplied, predictions are mapped back to each image's original size,
the threshold is applied to probabilities (never to logits), and every metric is
computed at the original resolution.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medistill.data import load_sample, pair_folder, validate_samples, write_mask_png
from medistill.errors import DataProblem, MedistillError
from medistill.evaluate.metrics import binary_metrics, multiclass_metrics
from medistill.evaluate.report import MetricTable, format_summary_table, write_report
from medistill.evaluate.visualise import plot_metric_distribution, save_panel
from medistill.export import Predictor, load_predictor
from medistill.fileio import write_json_atomic
from medistill.predict.engine import mask_labels, png_mask_values, predict_probabilities

log = logging.getLogger("medistill.evaluate")

CONFIG_NAME = "eval_config.json"
DISTRIBUTION_NAME = "dice_distribution.png"


@dataclass
class EvalConfig:
    """Settings of one prediction/evaluation run (saved as ``eval_config.json``)."""

    image_dir: str
    model_path: str
    mask_dir: str | None = None
    vis_dir: str | None = None
    out: str | None = None
    pred_dir: str | None = None
    threshold: float = 0.5
    noise_floor: bool = True
    num_vis: int = 20
    mask_suffix: str = ""
    mask_mode: str = "auto"
    batch: int = 8
    skip_bad: bool = False
    mask_pattern: str | None = None

    def __post_init__(self) -> None:
        if self.mask_pattern and self.mask_suffix:
            raise MedistillError("give either --mask-suffix or --mask-pattern, not both")
        if self.mask_pattern and not self.mask_dir:
            raise MedistillError("--mask-pattern needs --mask_dir (the folder the pattern looks in)")
        if not 0.0 < self.threshold < 1.0:
            raise MedistillError(f"--threshold is a probability: it must lie in (0, 1), got {self.threshold}")
        if self.batch < 1:
            raise MedistillError("--batch must be at least 1")

    @property
    def output_dir(self) -> Path:
        """Where predictions and reports go when no explicit path is given."""
        if self.vis_dir:
            return Path(self.vis_dir)
        return Path(self.out).parent if self.out else Path("predictions")


def _samples(config: EvalConfig):
    problems: list[DataProblem] = []
    samples = pair_folder(config.image_dir, config.mask_dir, mask_suffix=config.mask_suffix,
                          mask_mode=config.mask_mode, problems=problems, mask_pattern=config.mask_pattern)
    return validate_samples(samples, skip_bad=config.skip_bad, mask_mode=config.mask_mode,
                            problems=problems)


def _metrics(predictor: Predictor, labels: np.ndarray, truth: np.ndarray) -> dict:
    num_classes = predictor.card.num_classes
    if truth.max(initial=0) >= num_classes:
        raise MedistillError(
            f"a ground-truth mask has label {int(truth.max())} but the model knows {num_classes} classes; "
            "check --mask_dir and --mask-mode")
    if num_classes == 2:
        return binary_metrics(labels > 0, truth > 0)
    return multiclass_metrics(labels, truth, num_classes)


def _foreground_probability(prob: np.ndarray) -> np.ndarray:
    return prob if prob.ndim == 2 else 1.0 - prob[..., 0]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_paths(config: EvalConfig) -> None:
    """Refuse outputs that would land in (or hold) an input folder, before anything is written.

    ``--vis_dir``, ``--pred_dir``, the folder of ``--out`` (and the default output folder)
    may not be, contain, or lie inside ``--image_dir`` or ``--mask_dir``: predictions,
    overlays and plots named like inputs would replace them.
    """
    inputs = {"--image_dir": config.image_dir, "--mask_dir": config.mask_dir}
    outputs = {"--vis_dir": config.vis_dir, "--pred_dir": config.pred_dir,
               "--out": str(Path(config.out).parent) if config.out else None}
    if not config.vis_dir and not config.out:
        outputs["the default output folder"] = str(config.output_dir)
    for out_name, out_value in outputs.items():
        if not out_value:
            continue
        out_path = Path(out_value).expanduser().resolve()
        for in_name, in_value in inputs.items():
            if not in_value:
                continue
            in_path = Path(in_value).expanduser().resolve()
            if _inside(out_path, in_path) or _inside(in_path, out_path):
                where = "is" if out_path == in_path else "is inside" if _inside(out_path, in_path) else "contains"
                shown = config.out if out_name == "--out" else out_value
                raise MedistillError(
                    f"{out_name} {shown} {where} {in_name} {in_value}: the outputs (predicted masks, overlays, "
                    f"metrics) would be written among your input files and could replace them. Choose an "
                    f"output folder outside {in_value}.")
    if (config.vis_dir and config.pred_dir
            and Path(config.vis_dir).expanduser().resolve() == Path(config.pred_dir).expanduser().resolve()):
        raise MedistillError(f"--pred_dir and --vis_dir are both {config.vis_dir}: overlays and predicted masks "
                             "are both named STEM.png and would replace each other; give two folders")


class _Staging:
    """Outputs are written under a temporary folder and moved into place by :meth:`commit`.

    A run killed before the end leaves every earlier output as it was (and a hidden
    ``.tmp-eval-*`` folder); :meth:`commit` writes ``eval_config.json`` last, so a new
    config never sits beside old metrics.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f".tmp-eval-{out_dir.name}-", dir=out_dir.parent))
        self._moves: list[tuple[Path, Path]] = []

    def path(self, final: Path) -> Path:
        """Where to write what belongs at ``final``."""
        staged = self.root / str(len(self._moves))
        staged.mkdir()
        staged = staged / final.name
        self._moves.append((staged, final))
        return staged

    def folder(self, final: Path) -> Path:
        """A staged folder whose files are moved into ``final`` one by one."""
        return self.path(final)

    def commit(self, config_path: Path, config: dict, stale: list[Path]) -> None:
        """Move everything into place; remove ``stale`` outputs of an earlier run; config last."""
        for path in stale:
            if path.is_file():
                path.unlink()
        for staged, final in self._moves:
            if staged.is_dir():
                final.mkdir(parents=True, exist_ok=True)
                for item in sorted(staged.iterdir()):
                    _move(item, final / item.name)
            elif staged.exists():
                _move(staged, final)
        write_json_atomic(config_path, config)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError:  # another file system
        shutil.move(str(source), str(target))


def predict_and_evaluate(config: EvalConfig) -> dict | None:
    """Run the whole command; returns the metric summary (None without masks)."""
    check_output_paths(config)
    predictor = load_predictor(config.model_path)
    samples = _samples(config)
    out_dir = config.output_dir
    staging = _Staging(out_dir)
    try:
        summary = _run(config, predictor, samples, staging)
        csv_path = Path(config.out) if config.out else out_dir / "metrics.csv"
        stale = [csv_path, csv_path.with_suffix(".json")] if summary is None else []
        if config.vis_dir and summary is None:
            stale.append(Path(config.vis_dir) / DISTRIBUTION_NAME)
        if not (out_dir / CONFIG_NAME).is_file():
            stale = []  # not a folder of an earlier evaluation: touch nothing of it
        staging.commit(out_dir / CONFIG_NAME, asdict(config), stale)
    finally:
        staging.discard()
    if summary is not None:
        print(format_summary_table(summary))
        print(f"per-image metrics: {csv_path}; summary: {csv_path.with_suffix('.json')}")
    return summary


def _run(config: EvalConfig, predictor: Predictor, samples: list, staging: _Staging) -> dict | None:
    out_dir = config.output_dir
    pred_dir = staging.folder(Path(config.pred_dir) if config.pred_dir else out_dir / "predictions")
    pred_dir.mkdir(parents=True, exist_ok=True)
    vis_dir = staging.folder(Path(config.vis_dir)) if config.vis_dir else None
    table = MetricTable()
    shown = 0
    log.info("predicting %d image(s) with %s", len(samples), predictor.source)
    bar = tqdm(total=len(samples), desc="predict", unit="image")
    for start in range(0, len(samples), config.batch):
        chunk = samples[start:start + config.batch]
        loaded = [load_sample(s, mask_mode=config.mask_mode) for s in chunk]
        probs = predict_probabilities(predictor, [image for image, _ in loaded], batch=config.batch)
        for sample, (image, truth), prob in zip(chunk, loaded, probs):
            labels = mask_labels(predictor, prob, config.threshold, config.noise_floor)
            write_mask_png(pred_dir / f"{sample.stem}.png", png_mask_values(labels, predictor.card.num_classes))
            if truth is not None:
                table.add(sample.stem, _metrics(predictor, labels, truth))
            if vis_dir is not None and shown < config.num_vis:
                save_panel(vis_dir / f"{sample.stem}.png", image,
                           None if truth is None else truth > 0, labels > 0,
                           prob=_foreground_probability(prob), title=sample.stem)
                shown += 1
        bar.update(len(chunk))
    bar.close()
    log.info("predicted %d mask(s) for %s", len(samples),
             Path(config.pred_dir) if config.pred_dir else out_dir / "predictions")
    if len(table) == 0:
        return None
    frame, summary = table.frame(), table.summary()
    csv_path = Path(config.out) if config.out else out_dir / "metrics.csv"
    staged_csv = staging.path(csv_path)
    staged_json = staging.path(csv_path.with_suffix(".json"))
    write_report(frame, summary, staged_csv, staged_json)
    if vis_dir is not None:
        plot_metric_distribution(frame, "dice", path=vis_dir / DISTRIBUTION_NAME)
    return summary
