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
    valid = student_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = ", ".join(f"{key}={value!r}" for key, value in valid.items())
        raise StudentError(
            f"student {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options (with defaults) are: {listing}"
        )
    return STUDENTS[name](in_channels=in_channels, num_classes=num_classes, **options)


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
