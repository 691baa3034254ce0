"""Pictures of predictions: contour overlays, per-image panels, metric distributions.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas, never through
pyplot, so nothing here needs or changes a display backend. Files are written
atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medistill.fileio import atomic_path

TRUTH_COLOUR: tuple[int, int, int] = (0, 255, 0)  # green, RGB
PREDICTION_COLOUR: tuple[int, int, int] = (255, 0, 0)  # red, RGB
RATIO_METRICS: tuple[str, ...] = ("dice", "iou", "sensitivity", "specificity", "precision")


def to_grey_uint8(image: np.ndarray) -> np.ndarray:
    """An image as (H, W) uint8 grey, min-max stretched to 0-255 (constant -> 0)."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3] @ np.array([0.299, 0.587, 0.114])
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, 1|3|4), got shape {np.shape(image)}")
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros(array.shape, np.uint8)
    low, high = array[finite].min(), array[finite].max()
    span = high - low if high > low else 1.0
    scaled = np.where(finite, (array - low) / span * 255.0, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def contour_thickness(height: int, width: int) -> int:
    """Line width in pixels: 1 up to 256 px, growing with the longer side."""
    return max(1, round(max(height, width) / 256))


def _check_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.shape != shape:
        raise ValueError(f"{name} shape {array.shape} differs from image shape {shape}")
    return array


def draw_contours(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int],
                  thickness: int) -> None:
    """Draw the outline of every label > 0 of ``mask`` on ``rgb`` in place."""
    labels = np.asarray(mask)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    for label in np.unique(labels):
        if label == 0:
            continue
        region = (labels == label).astype(np.uint8)
        # RETR_LIST keeps hole outlines too; CHAIN_APPROX_NONE keeps every boundary pixel.
        contours, _ = cv2.findContours(region, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, colour, thickness)


def overlay(
    image: np.ndarray, truth_mask: np.ndarray | None, pred_mask: np.ndarray | None
) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the image in grey, truth outlined green, prediction red.

    The prediction is drawn last, so red shows where the two outlines coincide.
    Either mask may be None.
    """
    grey = to_grey_uint8(image)
    rgb = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
    thickness = contour_thickness(*grey.shape)
    if truth_mask is not None:
        truth = _check_mask(truth_mask, grey.shape, "ground truth")
        draw_contours(rgb, truth, TRUTH_COLOUR, thickness)
    if pred_mask is not None:
        pred = _check_mask(pred_mask, grey.shape, "prediction")
        draw_contours(rgb, pred, PREDICTION_COLOUR, thickness)
    return rgb


def _save_figure(figure: Figure, path: str | os.PathLike, dpi: int) -> Path:
    FigureCanvasAgg(figure)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    return Path(path)


def _show(axis, picture: np.ndarray, title: str, **options) -> None:
    axis.imshow(picture, **options)
    axis.set_title(title)
    axis.set_axis_off()


def save_panel(
    path: str | os.PathLike,
    image: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray,
    prob: np.ndarray | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Save a PNG row: image | ground truth (green) | prediction (red) [| probability].

    The prediction panel shows the truth outline too, for comparison. ``prob`` is a
    foreground probability map in [0, 1]; for a (H, W, K) softmax output pass the
    class of interest or ``1 - prob[..., 0]``.
    """
    grey = to_grey_uint8(image)
    columns = 3 if prob is None else 4
    figure = Figure(figsize=(4 * columns, 4.4), layout="constrained")
    axes = figure.subplots(1, columns)
    _show(axes[0], grey, "image", cmap="gray", vmin=0, vmax=255)
    if truth is None:
        _show(axes[1], grey, "ground truth (none)", cmap="gray", vmin=0, vmax=255)
    else:
        _show(axes[1], overlay(image, truth, None), "ground truth")
    _show(axes[2], overlay(image, truth, pred), "prediction")
    if prob is not None:
        probability = _check_mask(prob, grey.shape, "probability map").astype(np.float32)
        _show(axes[3], probability, "probability", cmap="viridis", vmin=0.0, vmax=1.0)
        figure.colorbar(axes[3].images[0], ax=axes[3], fraction=0.046)
    if title:
        figure.suptitle(title)
    return _save_figure(figure, path, dpi)


def plot_metric_distribution(
    df: pd.DataFrame,
    metric: str = "dice",
    *,
    path: str | os.PathLike,
    bins: int = 20,
    dpi: int = 100,
) -> Path:
    """Save a PNG histogram and strip plot of one per-image metric, mean marked.

    Undefined (NaN) values are left out; the title says how many values were plotted.
    """
    if metric not in df.columns:
        raise ValueError(f"no column {metric!r} in the table; columns: {list(df.columns)}")
    values = pd.to_numeric(df[metric], errors="coerce").astype(float).dropna().to_numpy()
    figure = Figure(figsize=(6, 5), layout="constrained")
    histogram_axis, strip_axis = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    figure.suptitle(f"{metric}: {values.size} of {len(df)} images defined")
    is_ratio = metric.split("_c")[0] in RATIO_METRICS
    if values.size:
        mean = float(values.mean())
        histogram_axis.hist(values, bins=bins, range=(0.0, 1.0) if is_ratio else None,
                            color="tab:blue", alpha=0.8)
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, values.size)
        strip_axis.scatter(values, jitter, s=12, alpha=0.7, color="tab:blue")
        histogram_axis.axvline(mean, color="tab:red", linestyle="--", label=f"mean {mean:.4f}")
        strip_axis.axvline(mean, color="tab:red", linestyle="--")
        histogram_axis.legend(loc="upper left")
    else:
        histogram_axis.text(0.5, 0.5, "no defined values", ha="center", va="center",
                            transform=histogram_axis.transAxes)
    histogram_axis.set_ylabel("images")
    strip_axis.set_yticks([])
    strip_axis.set_ylim(-0.5, 0.5)
    strip_axis.set_xlabel(metric)
    if is_ratio:
        strip_axis.set_xlim(-0.02, 1.02)
    return _save_figure(figure, path, dpi)
