"""Command-line option values shared by the commands: one parser for JSON options.

>>> json_object('{"base_filters": 16}', "--student-options")
{'base_filters': 16}
>>> json_object("null", "--fixed-weights", allow_null=True) is None
True
"""

from __future__ import annotations

import json
from typing import Any

from medistill.errors import MedistillError


def json_object(text: str, option: str, allow_null: bool = False) -> dict[str, Any] | None:
    """The JSON object given to ``option``; a :class:`MedistillError` naming it for anything else.

    ``allow_null`` accepts ``null`` (returned as None) for options whose absence means "none".
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise MedistillError(f"{option} is not valid JSON: {error}") from error
    if value is None and allow_null:
        return None
    if not isinstance(value, dict):
        raise MedistillError(f"{option} must be a JSON object such as '{{\"base_filters\": 16}}', got {text!r}")
    return value
