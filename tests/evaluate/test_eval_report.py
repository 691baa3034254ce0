"""Per-image tables, NaN-safe summaries and report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from medistill.evaluate.metrics import METRIC_NAMES, binary_metrics, multiclass_metrics
from medistill.evaluate.report import (
    MetricTable,
    format_summary_table,
    metrics_table,
    summarise,
    write_report,
)

BASE = ["image", "case", *METRIC_NAMES]


def square(top, left, size, shape=(12, 12)):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def binary_results():
    """Four images, one of each case."""
    truth = square(1, 1, 4)
    empty = np.zeros_like(truth)
    return {
        "normal.png": binary_metrics(square(2, 2, 4), truth),
        "missed.png": binary_metrics(empty, truth),
        "false_positive.png": binary_metrics(truth, empty),
        "both_empty.png": binary_metrics(empty, empty),
    }


def test_binary_table_columns_and_rows():
    df = metrics_table(binary_results())
    assert list(df.columns) == BASE
    assert list(df["image"]) == ["normal.png", "missed.png", "false_positive.png", "both_empty.png"]
    assert list(df["case"]) == ["normal", "missed", "false_positive", "both_empty"]
    assert df.loc[0, "dice"] == pytest.approx(2 * 9 / 32)


def test_table_accepts_pairs_and_metric_table_matches():
    results = binary_results()
    table = MetricTable()
    for image, metrics in results.items():
        table.add(image, metrics)
    assert len(table) == 4
    pd.testing.assert_frame_equal(table.frame(), metrics_table(list(results.items())))
    assert table.summary()["cases"] == summarise(metrics_table(results))["cases"]


def test_flat_rows_keep_extra_values_as_columns():
    metrics = {**binary_metrics(square(2, 2, 4), square(1, 1, 4)), "dice_c1": 0.5}
    df = metrics_table({"a": metrics})
    assert list(df.columns) == [*BASE, "dice_c1"]
    assert summarise(df)["metrics"]["dice_c1"]["mean"] == 0.5


def test_empty_table_has_base_columns():
    assert list(metrics_table({}).columns) == BASE
    assert summarise(metrics_table({}))["n_images"] == 0


def test_multiclass_table_has_per_class_columns():
    truth = np.zeros((6, 6), np.int32)
    truth[0:2, 0:2] = 1
    truth[3:6, 3:6] = 2
    df = metrics_table({"a": multiclass_metrics(truth, truth, 3)})
    assert list(df.columns[: len(BASE)]) == BASE
    for label in (1, 2):
        assert f"case_c{label}" in df.columns
        assert all(f"{name}_c{label}" in df.columns for name in METRIC_NAMES)
    assert df.loc[0, "dice_c2"] == 1.0
    assert df.loc[0, "case_c1"] == "normal"


def test_summarise_uses_only_defined_values_and_counts_cases():
    df = metrics_table(binary_results())
    summary = summarise(df)
    assert summary["n_images"] == 4
    assert summary["cases"] == {"normal": 1, "both_empty": 1, "missed": 1, "false_positive": 1}
    assert summary["class_cases"] == {}
    dice = summary["metrics"]["dice"]
    normal_dice = 2 * 9 / 32
    assert dice["n"] == 4
    assert dice["mean"] == pytest.approx((normal_dice + 0 + 0 + 1) / 4)
    assert dice["median"] == pytest.approx(normal_dice / 2)
    assert dice["std"] == pytest.approx(np.std([normal_dice, 0, 0, 1], ddof=1))
    hd95 = summary["metrics"]["hd95"]  # defined for normal and both_empty only
    assert hd95["n"] == 2
    assert hd95["mean"] == pytest.approx(df.loc[0, "hd95"] / 2)
    assert summary["metrics"]["precision"]["n"] == 2  # normal, false_positive
    assert summary["metrics"]["sensitivity"]["n"] == 2  # normal, missed


def test_summarise_with_no_defined_value_or_a_single_one():
    df = pd.DataFrame({"image": ["a", "b"], "case": ["missed", "missed"],
                       "hd95": [math.nan, math.nan], "dice": [0.0, math.nan]})
    summary = summarise(df)
    assert summary["metrics"]["hd95"]["n"] == 0
    assert math.isnan(summary["metrics"]["hd95"]["mean"])
    dice = summary["metrics"]["dice"]
    assert (dice["n"], dice["mean"], dice["median"]) == (1, 0.0, 0.0)
    assert math.isnan(dice["std"])  # one value has no sample spread
    assert summary["cases"]["missed"] == 2


def test_summarise_counts_per_class_cases():
    truth = np.zeros((8, 8), np.int32)
    truth[0:2, 0:2] = 1
    truth[5:7, 5:7] = 2
    missed_two = np.where(truth == 2, 0, truth)
    df = metrics_table({"a": multiclass_metrics(truth, truth, 3),
                        "b": multiclass_metrics(missed_two, truth, 3)})
    summary = summarise(df)
    assert summary["class_cases"]["c2"]["missed"] == 1
    assert summary["class_cases"]["c2"]["normal"] == 1
    assert summary["class_cases"]["c1"]["normal"] == 2
    assert summary["metrics"]["hd95_c2"]["n"] == 1
    assert "case_c1" not in summary["metrics"]


def test_format_summary_table_is_fixed_width_and_lists_cases():
    text = format_summary_table(summarise(metrics_table(binary_results())))
    lines = text.splitlines()
    metric_lines = [line for line in lines if line.split(" ")[0] in METRIC_NAMES]
    assert [line.split()[0] for line in metric_lines] == list(METRIC_NAMES)
    assert len({len(line) for line in [lines[0], *metric_lines]}) == 1
    assert lines[0].split() == ["metric", "n", "mean", "std", "median"]
    assert "missed 1" in text and "false_positive 1" in text and "both_empty 1" in text
    dice_line = next(line for line in metric_lines if line.startswith("dice"))
    assert dice_line.split()[1] == "4"


def test_format_summary_table_marks_undefined_values():
    df = pd.DataFrame({"image": ["a"], "case": ["missed"], "hd95": [math.nan]})
    text = format_summary_table(summarise(df))
    hd95_line = next(line for line in text.splitlines() if line.startswith("hd95"))
    assert hd95_line.split() == ["hd95", "0", "-", "-", "-"]


def test_write_report_csv_and_json_round_trip(tmp_path):
    df = metrics_table(binary_results())
    summary = summarise(df)
    csv_path, json_path = tmp_path / "out" / "metrics.csv", tmp_path / "out" / "summary.json"
    write_report(df, summary, csv_path, json_path)

    read_back = pd.read_csv(csv_path)
    assert list(read_back.columns) == BASE
    assert list(read_back["case"]) == list(df["case"])
    assert read_back["dice"].to_numpy() == pytest.approx(df["dice"].to_numpy())
    assert read_back["hd95"].isna().tolist() == df["hd95"].isna().tolist()

    def refuse_constant(name):
        raise AssertionError(f"JSON holds {name}, which is not valid JSON")

    document = json.loads(json_path.read_text(), parse_constant=refuse_constant)
    assert document["summary"]["cases"] == summary["cases"]
    written_dice = document["summary"]["metrics"]["dice"]
    assert written_dice["mean"] == pytest.approx(summary["metrics"]["dice"]["mean"])
    assert len(document["per_image"]) == 4
    assert document["per_image"][1]["hd95"] is None
    assert set(document["per_image"][0]) == set(BASE)
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["metrics.csv", "summary.json"]


def test_write_report_keeps_old_files_when_writing_fails(tmp_path, monkeypatch):
    csv_path, json_path = tmp_path / "metrics.csv", tmp_path / "metrics.json"
    csv_path.write_text("old\n")

    def crash_half_way(self, path, **options):
        open(path, "w").write("image,ca")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash_half_way)
    df = metrics_table(binary_results())
    with pytest.raises(OSError, match="disk full"):
        write_report(df, summarise(df), csv_path, json_path)
    assert csv_path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_write_report_replaces_an_existing_report(tmp_path):
    csv_path, json_path = tmp_path / "metrics.csv", tmp_path / "metrics.json"
    csv_path.write_text("old\n")
    json_path.write_text("{}")
    df = metrics_table(binary_results())
    write_report(df, summarise(df), csv_path, json_path)
    assert len(pd.read_csv(csv_path)) == 4
    assert json.loads(json_path.read_text())["summary"]["n_images"] == 4
