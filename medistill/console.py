"""The console log of medistill's commands (a low layer: any module may set it up).

Example::

    setup_logging(verbose=False)     # INFO and above on stderr, once per process
    quiet_libraries(verbose=False)   # before TensorFlow is imported: no C++ log noise
"""

from __future__ import annotations

import logging
import os
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


def quiet_libraries(verbose: bool = False) -> None:
    """Keep TensorFlow's and absl's own log lines off the console unless ``verbose``.

    Call it before TensorFlow is imported (the entry points do): TensorFlow reads
    ``TF_CPP_MIN_LOG_LEVEL`` once, at import. By default its C++ info and warning lines
    (``GeneratorDatasetOp::Dataset will not be optimized`` …) are hidden; on a machine
    without an NVIDIA device its error lines too, where the only one is the expected
    ``failed call to cuInit``. A value the user exported is kept. ``verbose`` shows all.
    The few lines TensorFlow prints while it loads, before its logging starts, cannot
    be turned off this way.
    """
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        quiet = "2" if _nvidia_device_present() else "3"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else quiet
    level = logging.DEBUG if verbose else logging.ERROR
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(level)


def _nvidia_device_present() -> bool:
    """Whether the NVIDIA driver exposes a device (then CUDA errors are worth seeing)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/dxg")
