"""Overlays, panels and metric plots."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
import pytest

from medistill.evaluate.visualise import (
    PREDICTION_COLOUR,
    TRUTH_COLOUR,
    contour_thickness,
    overlay,
    plot_metric_distribution,
    save_panel,
    to_grey_uint8,
)


def square(top, left, size, shape=(64, 64)):
    mask = np.zeros(shape, np.int32)
    mask[top : top + size, left : left + size] = 1
    return mask


def is_colour(rgb: np.ndarray, colour) -> np.ndarray:
    return (rgb == np.array(colour, np.uint8)).all(axis=-1)


def read_png(path) -> np.ndarray:
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert picture is not None, f"{path} is not a readable image"
    return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)


IMAGE = np.linspace(100.0, 300.0, 64 * 64, dtype=np.float32).reshape(64, 64, 1)
TRUTH = square(10, 10, 20)  # rows/cols 10..29
PRED = square(30, 34, 20)  # rows 30..49, cols 34..53: apart from the truth


def test_grey_is_stretched_to_full_range():
    grey = to_grey_uint8(IMAGE)
    assert grey.dtype == np.uint8 and grey.shape == (64, 64)
    assert grey.min() == 0 and grey.max() == 255
    assert to_grey_uint8(np.full((4, 4), 7.0)).max() == 0
    rgb = np.stack([IMAGE[..., 0]] * 3, axis=-1)
    assert to_grey_uint8(rgb).max() == 255
    with pytest.raises(ValueError, match="shape"):
        to_grey_uint8(np.zeros((4, 4, 2)))


def test_overlay_colours_truth_green_and_prediction_red():
    rgb = overlay(IMAGE, TRUTH, PRED)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    green, red = is_colour(rgb, TRUTH_COLOUR), is_colour(rgb, PREDICTION_COLOUR)
    assert green[10, 10] and green[20, 10] and green[29, 29]  # corners and an edge of the truth
    assert red[30, 34] and red[40, 53] and red[49, 40]  # edges of the prediction
    assert not green[30:50, 34:54].any() and not red[10:30, 10:30].any()
    # Interiors and far background keep the grey image.
    grey = to_grey_uint8(IMAGE)
    for row, col in [(20, 20), (40, 44), (60, 2)]:
        assert (rgb[row, col] == grey[row, col]).all()
    # One-pixel outlines at this size: the pixel just outside the truth stays grey.
    assert not green[20, 9]


def test_overlay_draws_prediction_over_truth_where_they_meet():
    rgb = overlay(IMAGE, TRUTH, TRUTH)
    assert is_colour(rgb, PREDICTION_COLOUR)[10, 10]
    assert not is_colour(rgb, TRUTH_COLOUR).any()


def test_overlay_without_truth_has_no_green():
    rgb = overlay(IMAGE, None, PRED)
    assert not is_colour(rgb, TRUTH_COLOUR).any()
    assert is_colour(rgb, PREDICTION_COLOUR)[30, 34]


def test_overlay_outlines_each_label_of_a_label_map():
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30] = 1
    labels[10:30, 30:50] = 2  # touches class 1: the shared border must be drawn
    red = is_colour(overlay(IMAGE, None, labels), PREDICTION_COLOUR)
    assert red[20, 29] and red[20, 30]


def test_overlay_outlines_holes_too():
    ring = square(10, 10, 30)
    ring[20:30, 20:30] = 0  # a hole: its border is part of the outline
    green = is_colour(overlay(IMAGE, ring, None), TRUTH_COLOUR)
    assert green[10, 10] and green[19, 25] and green[25, 30]
    assert not green[25, 25]


def test_contour_thickness_grows_with_image_size():
    assert contour_thickness(64, 64) == 1
    assert contour_thickness(300, 512) == 2
    assert contour_thickness(1024, 200) == 4
    big = np.zeros((512, 512), np.int32)
    big[100:300, 100:300] = 1
    green = is_colour(overlay(np.zeros((512, 512)), big, None), TRUTH_COLOUR)
    assert green[200, 99] and green[200, 101]  # the line is wider than one pixel


def test_overlay_refuses_mask_of_another_shape():
    with pytest.raises(ValueError, match=r"\(64, 60\).*\(64, 64\)"):
        overlay(IMAGE, TRUTH[:, :60], PRED)


def test_save_panel_writes_three_panel_png(tmp_path):
    path = tmp_path / "panels" / "case.png"
    returned = save_panel(path, IMAGE, TRUTH, PRED, title="case dice 0.00", dpi=50)
    assert returned == path
    picture = read_png(path)
    assert picture.shape == (220, 600, 3)  # 12 x 4.4 inches at 50 dpi
    # Resampled at 50 dpi the outlines are no longer pure colours; look for strong hues.
    red, green, blue = (picture[..., channel].astype(int) for channel in range(3))
    assert ((green > 150) & (red < 100) & (blue < 100)).any()  # truth outline
    assert ((red > 150) & (green < 100) & (blue < 100)).any()  # prediction outline
    first_panel = picture[:, :190]  # the plain image: grey only
    assert (np.ptp(first_panel.astype(int), axis=-1) < 30).all()
    assert [p.name for p in path.parent.iterdir()] == ["case.png"]


def test_save_panel_with_probability_adds_a_fourth_panel(tmp_path):
    probability = np.clip(TRUTH + 0.2, 0, 1).astype(np.float32)
    three = read_png(save_panel(tmp_path / "three.png", IMAGE, None, PRED, dpi=50))
    four = read_png(save_panel(tmp_path / "four.png", IMAGE, TRUTH, PRED, prob=probability, dpi=50))
    assert three.shape == (220, 600, 3)
    assert four.shape == (220, 800, 3)
    with pytest.raises(ValueError, match="probability"):
        save_panel(tmp_path / "bad.png", IMAGE, TRUTH, PRED, prob=probability[:10])


def test_plot_metric_distribution_writes_png(tmp_path):
    df = pd.DataFrame({"image": list("abcde"), "dice": [0.9, 0.8, math.nan, 0.1, 1.0]})
    path = plot_metric_distribution(df, "dice", path=tmp_path / "dice.png", dpi=50)
    picture = read_png(path)
    assert picture.shape == (250, 300, 3)
    assert picture.std() > 0  # something was drawn


def test_plot_metric_distribution_handles_no_defined_value_and_bad_column(tmp_path):
    df = pd.DataFrame({"image": ["a"], "hd95": [math.nan]})
    assert read_png(plot_metric_distribution(df, "hd95", path=tmp_path / "hd95.png")).size
    with pytest.raises(ValueError, match="no column 'dice'"):
        plot_metric_distribution(df, path=tmp_path / "dice.png")
