"""The PNG of a MedDistill run: every loss term and every loss weight, epoch by epoch.

Left: the loss terms (``bce``, ``prob``, ``feat``, ``colearn``, the weighted ``loss`` and
the held-out ``val_bce``), log scale when all are positive. Right: the weight each term
received (``w_bce``, ``w_prob``, ``w_feat``: the mean over the epoch's images) and the
ULWR ``penalty``. ``val_dice`` (agreement with the teacher) is drawn on the right too,
dashed, since it shares the [0, 1] range.

Example::

    plot_distillation(history_rows, "runs/md/loss_terms.png")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from medistill.fileio import atomic_path  # noqa: E402

TERM_COLUMNS = ("loss", "bce", "prob", "feat", "colearn", "val_bce")


def _finite(values: list) -> list[float]:
    return [float(v) for v in values if v is not None and v == v and abs(float(v)) != float("inf")]


def plot_distillation(history: list[dict], path: str | Path) -> None:
    """Write the two-panel PNG (terms | weights) for ``history`` rows (as in ``history.csv``)."""
    if not history:
        return
    epochs = [row["epoch"] for row in history]
    present = [k for k in history[0] if k != "epoch"]
    terms = [k for k in TERM_COLUMNS if k in present]
    weights = [k for k in present if k.startswith("w_")] + (["penalty"] if "penalty" in present else [])
    figure = Figure(figsize=(11, 4), dpi=100)
    term_axes, weight_axes = figure.subplots(1, 2)
    for name in terms:
        term_axes.plot(epochs, [row.get(name) for row in history], marker="o", label=name)
    values = _finite([row.get(name) for row in history for name in terms])
    if values and min(values) > 0:
        term_axes.set_yscale("log")
    term_axes.set(xlabel="epoch", ylabel="loss (mean per image)", title="loss terms")
    if terms:
        term_axes.legend()
    for name in weights:
        weight_axes.plot(epochs, [row.get(name) for row in history], marker="o", label=name)
    if "val_dice" in present:
        weight_axes.plot(epochs, [row.get("val_dice") for row in history], linestyle="--", color="grey",
                         label="val_dice (agreement)")
    weight_axes.set(xlabel="epoch", ylabel="weight", title="loss weights")
    if weights or "val_dice" in present:
        weight_axes.legend()
    for axes in (term_axes, weight_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
