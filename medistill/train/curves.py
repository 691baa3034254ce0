"""Training curves as a PNG a person can glance at."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from medistill.fileio import atomic_path  # noqa: E402


def plot_history(history: list[dict], path: str | Path) -> None:
    """Loss terms on the left, validation scores on the right, one point per epoch."""
    if not history:
        return
    epochs = [row["epoch"] for row in history]
    names = [k for k in history[0] if k not in ("epoch", "lr")]
    losses = [n for n in names if not n.startswith("val_") or n == "val_loss"]
    scores = [n for n in names if n.startswith("val_") and n != "val_loss"]
    figure = Figure(figsize=(10, 4), dpi=100)
    loss_axes, score_axes = figure.subplots(1, 2)
    for name in losses:
        loss_axes.plot(epochs, [row.get(name) for row in history], marker="o", label=name)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="losses")
    loss_axes.legend()
    for name in scores:
        score_axes.plot(epochs, [row.get(name) for row in history], marker="o", label=name)
    score_axes.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    if scores:
        score_axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
