"""The console log of medistill's commands (a low layer: any module may set it up).

Example::

    setup_logging(verbose=False)     # INFO and above on stderr, once per process
    quiet_libraries(verbose=False)   # before TensorFlow is imported: no C++ log noise
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any


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
    The lines TensorFlow's C++ core prints while it loads, before its logging starts
    (``oneDNN custom operations are on``, ``Could not find cuda drivers``), ignore that
    variable: unless ``verbose``, the import of TensorFlow, whenever it happens, runs
    with the process's stderr sent to /dev/null (a Python error during the import is
    still raised and printed; ``-v`` shows everything if the import itself crashes).
    """
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        quiet = "2" if _nvidia_device_present() else "3"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else quiet
    level = logging.DEBUG if verbose else logging.ERROR
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(level)
    if not verbose and "tensorflow" not in sys.modules and not any(
            isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 (C and C++ code's stderr too) to /dev/null inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Runs the first import of one top-level package inside :func:`stderr_silenced`."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != self.package:
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup just below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            with stderr_silenced():
                load(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _nvidia_device_present() -> bool:
    """Whether the NVIDIA driver exposes a device (then CUDA errors are worth seeing)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/dxg")
