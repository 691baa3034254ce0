"""Command-line helpers shared by the commands: the parser class (help shows every
default), and one parser for JSON options.

>>> json_object('{"base_filters": 16}', "--student-options")
{'base_filters': 16}
>>> json_object("null", "--fixed-weights", allow_null=True) is None
True
"""

from __future__ import annotations

import argparse
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


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that ends every option's text with its default, unless the text already names it.

    Nothing is added for a default of None (the option is off or derived, which its text
    says), for plain on/off flags (``store_true``/``store_false``: off unless given), or
    for suppressed values. Descriptions keep their line breaks (usage examples).
    """

    def _format_action(self, action: argparse.Action) -> str:
        shown = shown_default(action)
        if not (action.help or "").strip() and shown is not None:
            # argparse writes no help line at all for an option without text
            action.help = "default: " + shown.replace("%", "%%")
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").strip()
        shown = shown_default(action)
        if shown is None or "default" in text.lower():
            return text
        shown = shown.replace("%", "%%")  # the help text is %-formatted next
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def shown_default(action: argparse.Action) -> str | None:
    """The default of ``action`` as ``--help`` writes it, or None where none is shown."""
    default = action.default
    if not action.option_strings or default is None or default is argparse.SUPPRESS:
        return None
    if isinstance(action, argparse.BooleanOptionalAction):
        return action.option_strings[0 if default else 1]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse._StoreConstAction, argparse._CountAction,
                           argparse._HelpAction, argparse._VersionAction)):
        return None
    if isinstance(default, (list, tuple)):
        return " ".join(_shown_value(value) for value in default) if default else None
    return _shown_value(default)


def _shown_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class HelpParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`DefaultsHelpFormatter`; its subcommands inherit it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def add_mask_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--mask-suffix``, ``--mask-pattern`` and ``--mask-mode``: how masks pair with images and are read."""
    from medistill.data.mask_layout import PATTERN_HELP

    parser.add_argument("--mask-suffix", default="", help="mask file stem = image stem + this (e.g. _mask)")
    parser.add_argument("--mask-pattern", help=PATTERN_HELP + "; not with --mask-suffix")
    parser.add_argument("--mask-mode", default="auto", choices=("auto", "binary", "labels"),
                        help="how a mask file's values are read (docs/DESIGN.md, mask reading rule; "
                        "files of --mask-pattern are always binary)")


def add_label_options(parser: argparse.ArgumentParser) -> None:
    """How probabilities become masks, shared by ``predict`` and ``evaluate``: threshold and noise floor."""
    parser.add_argument("--threshold", type=float, default=0.5, help="on probabilities, binary models (default 0.5)")
    parser.add_argument("--noise-floor", action=argparse.BooleanOptionalAction, default=True,
                        help="drop components below the model's noise floor, recorded in its card by "
                             "meddistill.py (default on; --no-noise-floor keeps every component)")
