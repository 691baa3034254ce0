"""Figures of bench_recipes.py: validation-Dice curves of every run, and the acceptance lines.

``draw_curves`` reads each run's ``history.csv`` (epoch, val_dice) and draws one panel per data
set: every method's mean over seeds, the baseline's seeds as thin lines, so one can see
whether the baseline had flattened at the chosen number of epochs. ``acceptance_lines``
says, per data set and recipe, whether the mean test Dice over seeds beats the baseline's (no
verdict where either side has a single run: one run is not a distribution).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path


def validation_curve(run_dir: Path) -> list[float]:
    """The per-epoch validation Dice of one run folder (empty when it has no history)."""
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [float(row["val_dice"]) for row in csv.DictReader(handle) if row.get("val_dice")]


def _mean_curve(curves: Sequence[list[float]]) -> list[float]:
    length = min((len(c) for c in curves), default=0)
    return [statistics.mean(c[i] for c in curves) for i in range(length)]


def draw_curves(runs: Iterable[tuple[str, str, int, Path]], datasets: Sequence[str], methods: Sequence[str],
                path: Path, baseline: str = "baseline") -> Path | None:
    """One panel per data set; ``runs`` are ``(dataset, method, seed, run_dir)``. Returns the PNG or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, str], list[list[float]]] = {}
    for dataset, method, _seed, run_dir in runs:
        curve = validation_curve(run_dir)
        if curve:
            curves.setdefault((dataset, method), []).append(curve)
    if not curves:
        return None
    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for seed_curve in curves.get((dataset, baseline), []):
            axis.plot(range(1, len(seed_curve) + 1), seed_curve, color="black", alpha=0.3, linewidth=0.8)
        for method in methods:
            mean = _mean_curve(curves.get((dataset, method), []))
            if mean:
                axis.plot(range(1, len(mean) + 1), mean, label=f"{method} (mean of {len(curves[(dataset, method)])})",
                          linewidth=2.2 if method == baseline else 1.2, color="black" if method == baseline else None)
        axis.set(title=f"{dataset}: validation Dice per epoch", xlabel="epoch", ylabel="validation Dice")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def flattening(curve: Sequence[float], last: int = 5) -> float:
    """Gain of the validation Dice over the last ``last`` epochs (max of the last ones − value before them)."""
    if len(curve) <= last:
        return float("nan")
    return max(curve[-last:]) - curve[-last - 1]


def acceptance_lines(dice: dict[tuple[str, str], list[float]], datasets: Sequence[str], recipes: Sequence[str],
                     baseline: str = "baseline") -> list[str]:
    """``- dataset: recipe +0.012 (beats) …`` from the per-seed test Dice of each (dataset, method)."""
    lines = []
    for dataset in datasets:
        base = dice.get((dataset, baseline), [])
        if not base:
            continue
        cells = []
        for recipe in recipes:
            values = dice.get((dataset, recipe), [])
            if values:
                delta = statistics.mean(values) - statistics.mean(base)
                verdict = ("no verdict from one run" if min(len(values), len(base)) < 2
                           else "beats" if round(delta, 3) > 0 else "does not beat")
                cells.append(f"{recipe} {delta:+.3f} ({verdict}, n = {len(values)})")
        lines.append(f"- **{dataset}** (baseline {statistics.mean(base):.3f}, n = {len(base)}): " + "; ".join(cells))
    return lines
