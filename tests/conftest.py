"""Test-wide settings: keep caches inside a temporary home, keep TensorFlow quiet."""

from __future__ import annotations

import os
import tempfile

_home = tempfile.mkdtemp(prefix="medistill-test-home-")
os.environ.setdefault("KERAS_HOME", os.path.join(_home, "keras"))
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_home, "matplotlib"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
