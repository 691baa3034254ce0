"""Errors meant for a person, not a traceback.

Every error that bad input can cause is a :class:`MedistillError` whose message names the
file and says what to do. The command-line entry point prints it and exits with status 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class MedistillError(Exception):
    """An error caused by the user's input or environment, with a readable message."""


class DataError(MedistillError):
    """A data set, image or mask that cannot be used as it is."""


class CheckpointError(MedistillError):
    """A model, run folder or checkpoint that cannot be read."""


@dataclass(frozen=True)
class DataProblem:
    """One problem with one file, found by a validation pass."""

    path: Path | None
    what: str
    fix: str = ""

    def __str__(self) -> str:
        where = str(self.path) if self.path is not None else "(data set)"
        text = f"{where}: {self.what}"
        return f"{text} ({self.fix})" if self.fix else text


def problems_error(problems: list[DataProblem], header: str) -> DataError:
    """One :class:`DataError` that lists every problem, one per line."""
    lines = [header] + [f"  - {p}" for p in problems]
    return DataError("\n".join(lines))
