"""A student (or teacher) network named for a benchmark: its registry name and builder options."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Student:
    """A network name and its ``--student-options``."""

    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Name plus options, for tables."""
        return f"`{self.name}` {json.dumps(self.options)}" if self.options else f"`{self.name}`"

    def arguments(self) -> list[str]:
        """As command-line arguments of a medistill command."""
        return ["--student", self.name, "--student-options", json.dumps(self.options)]
