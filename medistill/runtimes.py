"""What every exported graph medistill runs outside TensorFlow shares: precisions and OpenVINO's settings.

The teacher (``--teacher-precision``) and ``medistill predict`` (``--precision``) both run
graphs on OpenVINO's CPU plugin; both read their options from here, so that a precision
means the same thing everywhere. Importing this module imports no runtime.

Example:
    >>> openvino_cpu_config("bf16")
    {'INFERENCE_PRECISION_HINT': 'bf16', 'PERFORMANCE_HINT': 'LATENCY'}
    >>> check_precision("bf16", "onnxruntime", option="--precision")
    Traceback (most recent call last):
    ...
    medistill.errors.MedistillError: --precision bf16 runs only with --backend openvino, not onnxruntime; use fp32 there
"""

from __future__ import annotations

import logging
from typing import Any

from medistill.errors import MedistillError

LOG = logging.getLogger("medistill")

PRECISIONS = ("fp32", "bf16")
LOWER_PRECISION_BACKENDS = ("openvino",)


def check_precision(precision: str, backend: str, option: str = "--precision",
                    backend_option: str = "--backend") -> None:
    """Raise :class:`MedistillError` for an unknown precision or one ``backend`` does not offer
    (``option`` and ``backend_option`` name the command's options in the message)."""
    if precision not in PRECISIONS:
        raise MedistillError(f"{option} {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and backend not in LOWER_PRECISION_BACKENDS:
        raise MedistillError(f"{option} {precision} runs only with {backend_option} "
                             f"{' or '.join(LOWER_PRECISION_BACKENDS)}, not {backend}; use fp32 there")


def openvino_cpu_config(precision: str = "fp32", threads: int | None = None) -> dict[str, object]:
    """Compile options of OpenVINO's CPU plugin for one image (or batch) at a time.

    ``fp32`` is asked for explicitly: on CPUs with bf16 units OpenVINO otherwise computes
    in bf16. ``LATENCY`` runs one inference stream, what batch-1 work wants (in one
    60-round interleaved probe on the project's 2-core machine, 6.2 against 7.0 ms median
    for the default U-Net's forward pass at 128 px).
    """
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                 "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def compile_openvino(path: str, precision: str = "fp32", threads: int | None = None) -> Any:
    """``path`` (an OpenVINO IR ``.xml``) compiled for the CPU with :func:`openvino_cpu_config`.

    A CPU without bf16 units (no AVX-512 BF16 or AMX) computes in fp32 whatever is asked;
    then ``bf16`` is said in a warning instead of being silently ignored.
    """
    import openvino

    model = openvino.Core().compile_model(str(path), "CPU", openvino_cpu_config(precision, threads))
    computed = model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if precision == "bf16" and computed != "bf16":
        LOG.warning("OpenVINO: this CPU has no bf16 units; %s runs in %s (the same masks as fp32, "
                    "no faster)", path, computed)
    return model
