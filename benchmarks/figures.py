"""The figures of the benchmarks' run records as table cells: missing values shown as ``–``.

A run that failed or a metric that is undefined (HD95 of an empty mask) is ``None`` or NaN
in a record; :func:`finite` tells them apart from numbers, :func:`fmt` and :func:`mean_sd`
print them, :func:`mean` leaves them out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def finite(value) -> bool:
    """True for an int or float that is neither NaN nor infinite."""
    return value is not None and isinstance(value, (int, float)) and value == value and not math.isinf(value)


def fmt(value, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, ``–`` when it is not a finite number."""
    return f"{value:.{digits}f}" if finite(value) else "–"


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sample std`` of the finite values (one value alone, ``–`` for none)."""
    values = [v for v in values if finite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def mean(values: Sequence[float]) -> float:
    """The mean of the finite values; NaN when there are none."""
    values = [v for v in values if finite(v)]
    return statistics.mean(values) if values else float("nan")

