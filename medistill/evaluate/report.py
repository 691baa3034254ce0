"""Per-image metric tables, their summary, and report files.

A table has one row per image: ``image``, ``case``, the metrics of
:data:`~medistill.evaluate.metrics.METRIC_NAMES` and, for multi-class results,
per-class columns ``case_c<k>``, ``dice_c<k>``, ``iou_c<k>``, ... . Undefined values
are NaN; :func:`summarise` leaves them out of the statistics and counts the empty-mask
cases, so nothing undefined is silently averaged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from medistill.evaluate.metrics import CASES, MEAN_FOREGROUND, METRIC_NAMES
from medistill.fileio import atomic_path

BASE_COLUMNS: tuple[str, ...] = ("image", "case", *METRIC_NAMES)


def image_row(image: str, metrics: Mapping) -> dict:
    """One table row from :func:`binary_metrics` or :func:`multiclass_metrics` output.

    A flat mapping may carry extra values (say ``dice_c1``); they become columns after
    the standard ones.
    """
    if MEAN_FOREGROUND not in metrics:
        extra = {key: value for key, value in metrics.items() if key not in BASE_COLUMNS}
        return {"image": image, "case": metrics["case"],
                **{name: metrics[name] for name in METRIC_NAMES}, **extra}
    mean = metrics[MEAN_FOREGROUND]
    row = {"image": image, "case": mean["case"], **{name: mean[name] for name in METRIC_NAMES}}
    for label in sorted(key for key in metrics if key != MEAN_FOREGROUND):
        per_class = metrics[label]
        row[f"case_c{label}"] = per_class["case"]
        row.update({f"{name}_c{label}": per_class[name] for name in METRIC_NAMES})
    return row


def metrics_table(results: Mapping[str, Mapping] | Iterable[tuple[str, Mapping]]) -> pd.DataFrame:
    """A per-image DataFrame from ``{image: metrics}`` or ``(image, metrics)`` pairs."""
    pairs = results.items() if isinstance(results, Mapping) else results
    return rows_to_frame([image_row(str(image), metrics) for image, metrics in pairs])


def rows_to_frame(rows: list[dict]) -> pd.DataFrame:
    """A table from :func:`image_row` rows, base columns first."""
    if not rows:
        return pd.DataFrame(columns=list(BASE_COLUMNS))
    frame = pd.DataFrame(rows)
    extra = [column for column in frame.columns if column not in BASE_COLUMNS]
    return frame[list(BASE_COLUMNS) + extra]


class MetricTable:
    """Collects per-image metrics while predicting, then gives the table and summary."""

    def __init__(self) -> None:
        self._rows: list[dict] = []

    def add(self, image: str, metrics: Mapping) -> None:
        """Record the metrics of one image."""
        self._rows.append(image_row(image, metrics))

    def __len__(self) -> int:
        return len(self._rows)

    def frame(self) -> pd.DataFrame:
        """The per-image table collected so far."""
        return rows_to_frame(self._rows)

    def summary(self) -> dict:
        """:func:`summarise` of the table."""
        return summarise(self.frame())


def _is_case_column(column: str) -> bool:
    return column == "case" or column.startswith("case_c")


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a table, in table order (everything but names and cases)."""
    return [c for c in df.columns if c != "image" and not _is_case_column(str(c))]


def column_statistics(values: pd.Series) -> dict:
    """n, mean, std (sample, ddof=1), median over the defined (non-NaN) values."""
    defined = pd.to_numeric(values, errors="coerce").astype(float).dropna()
    n = int(defined.size)
    return {
        "n": n,
        "mean": float(defined.mean()) if n else math.nan,
        "std": float(defined.std(ddof=1)) if n > 1 else math.nan,
        "median": float(defined.median()) if n else math.nan,
    }


def count_cases(values: pd.Series) -> dict[str, int]:
    """How many rows fall in each empty-mask case (every known case listed, even if 0)."""
    counts = {case: 0 for case in CASES}
    for case, count in values.dropna().astype(str).value_counts().items():
        counts[case] = counts.get(case, 0) + int(count)
    return counts


def summarise(df: pd.DataFrame) -> dict:
    """Summary of a per-image table.

    Returns ``{"n_images", "cases": {case: count}, "class_cases": {"c<k>": {case:
    count}}, "metrics": {column: {"n", "mean", "std", "median"}}}``. Statistics use
    only defined values; ``n`` says how many. ``class_cases`` is empty for binary
    tables.
    """
    class_cases = {
        str(column)[len("case_"):]: count_cases(df[column])
        for column in df.columns
        if str(column).startswith("case_c")
    }
    cases = count_cases(df["case"]) if "case" in df else {case: 0 for case in CASES}
    return {
        "n_images": int(len(df)),
        "cases": cases,
        "class_cases": class_cases,
        "metrics": {str(column): column_statistics(df[column]) for column in metric_columns(df)},
    }


def _format_number(value: float, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.4f}"


def _format_cases(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{case} {count}" for case, count in counts.items())


def format_summary_table(summary: Mapping) -> str:
    """A fixed-width text table of a :func:`summarise` result; '-' marks undefined."""
    metrics = summary["metrics"]
    name_width = max([len("metric"), *(len(name) for name in metrics)])
    header = f"{'metric':<{name_width}}  {'n':>6}  {'mean':>10}  {'std':>10}  {'median':>10}"
    lines = [header, "-" * len(header)]
    for name, stats in metrics.items():
        numbers = "  ".join(_format_number(stats[key], 10) for key in ("mean", "std", "median"))
        lines.append(f"{name:<{name_width}}  {stats['n']:>6}  {numbers}")
    lines.append("")
    lines.append(f"images: {summary['n_images']}; cases: {_format_cases(summary['cases'])}")
    for label, counts in summary.get("class_cases", {}).items():
        lines.append(f"class {label}: {_format_cases(counts)}")
    return "\n".join(lines)


def to_jsonable(value):
    """A copy of ``value`` that :func:`json.dumps` accepts: NaN and inf become None."""
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def write_report(
    df: pd.DataFrame,
    summary: Mapping,
    out_csv: str | os.PathLike,
    out_json: str | os.PathLike,
) -> None:
    """Write the per-image table as CSV and ``{"summary", "per_image"}`` as JSON.

    Each file is written to a temporary file and moved into place, so a reader never
    sees half a report. Undefined values are empty cells in the CSV and null in JSON.
    """
    with atomic_path(out_csv) as temporary:
        df.to_csv(temporary, index=False)
    document = {"summary": summary, "per_image": df.to_dict(orient="records")}
    text = json.dumps(to_jsonable(document), indent=2, allow_nan=False)
    with atomic_path(out_json) as temporary:
        temporary.write_text(text + "\n", encoding="utf-8")
