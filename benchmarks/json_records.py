"""The benchmarks' JSON records (run settings, metrics, results): read leniently, written atomically.

:func:`read_json` gives ``{}`` for a missing or damaged file (a run killed while writing
it is done again); :func:`write_json` writes a temporary file and renames it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when the file is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` (folders made, file replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(temporary, path)

