"""Predict with a trained model over a folder and, given masks, measure it.

This is ``predict_eval.py`` / ``medistill evaluate``. The model's recorded
preprocessing is reapplied, predictions are mapped back to each image's original size,
the threshold is applied to probabilities (never to logits), and every metric is
computed at the original resolution.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medistill.data import load_sample, pair_folder, validate_samples, write_mask_png
from medistill.data.preprocess import preprocess_image
from medistill.errors import DataProblem, MedistillError
from medistill.evaluate.metrics import binary_metrics, multiclass_metrics
from medistill.evaluate.report import MetricTable, format_summary_table, write_report
from medistill.evaluate.visualise import plot_metric_distribution, save_panel
from medistill.export import Predictor, load_predictor
from medistill.fileio import write_json_atomic

log = logging.getLogger("medistill.evaluate")


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
    num_vis: int = 20
    mask_suffix: str = ""
    mask_mode: str = "auto"
    batch: int = 8
    skip_bad: bool = False

    def __post_init__(self) -> None:
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
                          mask_mode=config.mask_mode, problems=problems)
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


def predict_and_evaluate(config: EvalConfig) -> dict | None:
    """Run the whole command; returns the metric summary (None without masks)."""
    predictor = load_predictor(config.model_path)
    samples = _samples(config)
    out_dir = config.output_dir
    pred_dir = Path(config.pred_dir) if config.pred_dir else out_dir / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "eval_config.json", asdict(config))
    table = MetricTable()
    shown = 0
    log.info("predicting %d image(s) with %s", len(samples), predictor.source)
    bar = tqdm(total=len(samples), desc="predict", unit="image")
    for start in range(0, len(samples), config.batch):
        chunk = samples[start:start + config.batch]
        loaded = [load_sample(s, mask_mode=config.mask_mode) for s in chunk]
        prepared = [preprocess_image(image, predictor.card.preprocess) for image, _ in loaded]
        probs = predictor.predict_batch([x for x, _ in prepared], [g for _, g in prepared])
        for sample, (image, truth), prob in zip(chunk, loaded, probs):
            labels = predictor.labels(prob, config.threshold)
            write_mask_png(pred_dir / f"{sample.stem}.png", _as_png_labels(labels, predictor))
            if truth is not None:
                table.add(sample.stem, _metrics(predictor, labels, truth))
            if config.vis_dir and shown < config.num_vis:
                save_panel(Path(config.vis_dir) / f"{sample.stem}.png", image,
                           None if truth is None else truth > 0, labels > 0,
                           prob=_foreground_probability(prob), title=sample.stem)
                shown += 1
        bar.update(len(chunk))
    bar.close()
    log.info("wrote %d predicted mask(s) to %s", len(samples), pred_dir)
    if len(table) == 0:
        return None
    frame, summary = table.frame(), table.summary()
    csv_path = Path(config.out) if config.out else out_dir / "metrics.csv"
    write_report(frame, summary, csv_path, csv_path.with_suffix(".json"))
    if config.vis_dir:
        plot_metric_distribution(frame, "dice", path=Path(config.vis_dir) / "dice_distribution.png")
    print(format_summary_table(summary))
    print(f"per-image metrics: {csv_path}; summary: {csv_path.with_suffix('.json')}")
    return summary


def _as_png_labels(labels: np.ndarray, predictor: Predictor) -> np.ndarray:
    """Binary predictions are saved as 0/255 (viewable), label maps as their labels."""
    if predictor.card.num_classes == 2:
        return (labels > 0).astype(np.uint8) * 255
    return labels.astype(np.uint8)
