"""The console log of medistill's commands (a low layer: any module may set it up).

Example::

    setup_logging(verbose=False)     # INFO and above on stderr, once per process
"""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) messages of medistill on stderr; safe to call twice."""
    logger = logging.getLogger("medistill")
    if not any(getattr(h, "_medistill_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler._medistill_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False  # libraries that configure the root logger would print twice
