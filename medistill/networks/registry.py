"""The student networks by name: ``STUDENTS`` and ``build_student``.

Example:

>>> model = build_student("unet", in_channels=1, num_classes=1, base_filters=4, depth=2)
>>> model.name
'unet'
>>> sorted(STUDENTS)
['lcovnet', 'unet', 'unetpp']
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import keras

from medistill.errors import MedistillError
from medistill.networks.lcovnet import build_lcovnet
from medistill.networks.unet import build_unet
from medistill.networks.unetpp import build_unetpp

STUDENTS: dict[str, Callable[..., keras.Model]] = {
    "unet": build_unet,
    "unetpp": build_unetpp,
    "lcovnet": build_lcovnet,
}

_REQUIRED = ("in_channels", "num_classes")


class StudentError(MedistillError, ValueError):
    """A student name, option or feature name that does not exist."""


def student_options(name: str) -> dict[str, Any]:
    """The options of student ``name`` (besides in_channels/num_classes) and their defaults."""
    builder = _builder(name)
    parameters = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in _REQUIRED}


def build_student(name: str, *, in_channels: int, num_classes: int, **options: Any) -> keras.Model:
    """Build the student ``name`` (one of ``STUDENTS``) with the given builder options.

    Raises:
        StudentError (a ValueError): for an unknown name, listing the valid names, or an
            unknown option, listing that student's options.

    Example:

    >>> build_student("lcovnet", in_channels=3, num_classes=2).output_shape
    (None, None, None, 2)
    """
    check_student_options(name, options)
    return STUDENTS[name](in_channels=in_channels, num_classes=num_classes, **options)


# The option that sets each student's number of poolings: the input side must be a
# multiple of 2**poolings (the student's stride).
_POOLINGS: dict[str, Callable[[dict[str, Any]], int]] = {
    "unet": lambda o: int(o["depth"]),
    "unetpp": lambda o: len(o["filters"]) - 1,
    "lcovnet": lambda o: len(o["channels"]) - 1,
}
_LIMITS: dict[str, tuple[float, float]] = {  # inclusive lower, exclusive upper bound
    "depth": (1, 12), "base_filters": (1, 1 << 16), "dropout": (0.0, 1.0),
}


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (list, tuple)):
        return "a list of at least two positive integers"
    return "a string" if isinstance(default, str) else "a value"


def _fits(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return (isinstance(value, (list, tuple)) and len(value) >= 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value))
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def student_stride(name: str, options: dict[str, Any] | None = None) -> int:
    """The side the input must be divisible by: ``2**poolings`` of student ``name``."""
    merged = {**student_options(name), **(options or {})}
    return 2 ** _POOLINGS[name](merged)


def check_student_options(name: str, options: dict[str, Any], img_size: int | None = None) -> None:
    """Refuse unknown options, values of the wrong type or range, and an ``img_size`` that
    the student's stride does not divide; each :class:`StudentError` names the option.

    >>> check_student_options("unet", {"depth": 3}, img_size=64)
    >>> student_stride("unet", {"depth": 3})
    8
    """
    valid = student_options(name)
    if not isinstance(options, dict):
        raise StudentError(f"--student-options must be a JSON object such as '{{\"base_filters\": 16}}', "
                           f"got {options!r}")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = ", ".join(f"{key}={value!r}" for key, value in valid.items())
        raise StudentError(
            f"student {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options (with defaults) are: {listing}"
        )
    for key, value in options.items():
        default = valid[key]
        if not _fits(value, default):
            raise StudentError(f"--student-options: {key!r} of student {name!r} must be {_kind(default)} "
                               f"(default {default!r}), got {value!r}")
        low, high = _LIMITS.get(key, (None, None))
        if low is not None and not low <= value < high:
            raise StudentError(f"--student-options: {key!r} of student {name!r} must lie in [{low}, {high}), "
                               f"got {value!r}")
    if img_size is not None:
        stride = student_stride(name, options)
        if img_size < stride or img_size % stride:
            poolings = _POOLINGS[name]({**valid, **options})
            raise StudentError(
                f"--img-size {img_size} is not a multiple of {stride}, the stride of student {name!r} "
                f"({poolings} poolings, 2**{poolings}); use e.g. --img-size "
                f"{max(stride, round(img_size / stride) * stride)}, or fewer levels in --student-options")


def _builder(name: str) -> Callable[..., keras.Model]:
    if name in STUDENTS:
        return STUDENTS[name]
    hint = f" Did you mean {_closest(name)!r}?" if _closest(name) else ""
    options = "; ".join(
        f"{student}: {', '.join(student_options(student))}" for student in STUDENTS
    )
    raise StudentError(
        f"unknown student {name!r}.{hint} Valid students: {', '.join(STUDENTS)} "
        f"(options: {options})"
    )


def _closest(name: str) -> str | None:
    # Spellings from the papers ("UNet++", "LCOV-Net") first, then plain typos.
    spelled = str(name).lower().replace("++", "pp").replace("-", "").replace("_", "")
    if spelled in STUDENTS:
        return spelled
    close = difflib.get_close_matches(spelled, STUDENTS, n=1, cutoff=0.5)
    return close[0] if close else None
