"""Teachers by name: ``build_teacher("litemedsam")``, extendable with :func:`register_teacher`.

A name is ``"<kind>"`` or ``"<kind>:<argument>"``; the factory registered for ``kind``
receives the argument (or None):

* ``litemedsam`` / ``litemedsam:/path/to.pth`` — LiteMedSAM in Keras (bundled or given
  checkpoint, converted once and cached);
* ``grabcut`` — OpenCV GrabCut (no weights);
* ``sam:<preset-or-dir>`` / ``tiny-sam`` — keras-hub SAM, when its module is present.

Where and how a teacher runs (``--teacher-backend``, ``--teacher-precision``,
``--teacher-batch``) is a :class:`TeacherRuntime`, parsed once by the command and made
the process default with :func:`use_runtime`; every :func:`build_teacher` call (the cache,
live teaching, co-learning, refinement rounds) then builds the teacher with it. Only
teachers registered with ``runtime=True`` (LiteMedSAM) take one; the others refuse a
runtime other than the default (``auto`` backend, fp32).

Example::

    register_teacher("mine", lambda argument: MyTeacher(argument))
    teacher = build_teacher("mine:option")
    use_runtime(TeacherRuntime(backend="openvino"))
    fast = build_teacher("litemedsam")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from medistill.errors import MedistillError
from medistill.runtimes import PRECISIONS
from medistill.teachers.base import Teacher

TeacherFactory = Callable[..., Teacher]
_FACTORIES: dict[str, TeacherFactory] = {}
_TAKES_RUNTIME: set[str] = set()
BACKEND_CHOICES = ("auto", "keras", "onnxruntime", "openvino")
RESIZE_CHOICES = ("area", "bilinear")


@dataclass(frozen=True)
class TeacherRuntime:
    """Where a teacher runs: ``backend`` (``auto`` = the fastest that passed parity, see
    :data:`medistill.teachers.litemedsam.backends.DEFAULT_BACKEND`), ``precision``,
    ``encode_batch`` (images per encoder call; None: the backend's default), ``threads``
    (None: every core) and ``resize`` (how the image is brought to the encoder's size:
    ``area``, LiteMedSAM's own, or ``bilinear``; recorded in a cache's provenance)."""

    backend: str = "auto"
    precision: str = "fp32"
    encode_batch: int | None = None
    threads: int | None = None
    resize: str = "area"

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_CHOICES:
            raise MedistillError(f"--teacher-backend {self.backend!r} is not one of {', '.join(BACKEND_CHOICES)}")
        if self.precision not in PRECISIONS:
            raise MedistillError(f"--teacher-precision {self.precision!r} is not one of "
                                 f"{', '.join(PRECISIONS)}")
        if self.resize not in RESIZE_CHOICES:
            raise MedistillError(f"--teacher-resize {self.resize!r} is not one of {', '.join(RESIZE_CHOICES)}")
        for name in ("encode_batch", "threads"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise MedistillError(f"--teacher-{name.replace('_', '-')} must be at least 1, got {value}")

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (``TeacherRuntime(**d)`` rebuilds it)."""
        return {"backend": self.backend, "precision": self.precision, "encode_batch": self.encode_batch,
                "threads": self.threads, "resize": self.resize}

    @property
    def is_default(self) -> bool:
        """Whether it asks nothing of a teacher but to run as it is (``threads`` is only a cap)."""
        return (self.backend in ("auto", "keras") and self.precision == "fp32" and self.encode_batch is None
                and self.resize == "area")


_RUNTIME = TeacherRuntime()


def use_runtime(runtime: TeacherRuntime) -> None:
    """Make ``runtime`` the one :func:`build_teacher` uses when it is given none (set once per command)."""
    global _RUNTIME
    _RUNTIME = runtime


def current_runtime() -> TeacherRuntime:
    """The process's :class:`TeacherRuntime` (see :func:`use_runtime`)."""
    return _RUNTIME


def register_teacher(name: str, factory: TeacherFactory, runtime: bool = False) -> None:
    """Make ``build_teacher(name[:argument])`` call ``factory(argument)``; replaces an old entry.

    ``runtime=True``: the factory is called as ``factory(argument, runtime)`` with the
    :class:`TeacherRuntime` in force.
    """
    if not name or ":" in name:
        raise ValueError(f"teacher name must be non-empty and without ':', got {name!r}")
    _FACTORIES[name] = factory
    _TAKES_RUNTIME.discard(name)
    if runtime:
        _TAKES_RUNTIME.add(name)


def available_teachers() -> list[str]:
    """Registered teacher kinds, sorted."""
    return sorted(_FACTORIES)


def build_teacher(spec: str, runtime: TeacherRuntime | None = None) -> Teacher:
    """Build the teacher named by ``spec`` (``kind`` or ``kind:argument``) to run as ``runtime``
    (default: the process's, :func:`use_runtime`)."""
    kind, sep, argument = str(spec).partition(":")
    if kind not in _FACTORIES:
        raise MedistillError(f"unknown teacher {spec!r}; available: {', '.join(available_teachers())} "
                             "(optionally as kind:argument, e.g. litemedsam:/path/to.pth)")
    runtime = runtime or _RUNTIME
    argument = argument if sep and argument else None
    if kind in _TAKES_RUNTIME:
        return _FACTORIES[kind](argument, runtime)
    if not runtime.is_default:
        raise MedistillError(f"teacher {kind!r} runs only as it is: --teacher-backend, --teacher-precision, "
                             "--teacher-batch and --teacher-resize apply to litemedsam; leave them at their defaults")
    return _FACTORIES[kind](argument)


def resolved_backend(backend: str) -> str:
    """The backend LiteMedSAM runs on for ``--teacher-backend backend`` (``auto``: the default one,
    or Keras where the default one's runtime is not installed)."""
    import importlib.util

    from medistill.teachers.litemedsam.backends import DEFAULT_BACKEND

    if backend != "auto":
        return backend
    return DEFAULT_BACKEND if importlib.util.find_spec(DEFAULT_BACKEND) is not None else "keras"


def _litemedsam(argument: str | None, runtime: TeacherRuntime) -> Teacher:
    from medistill.teachers.litemedsam.backends import DEFAULT_ENCODE_BATCH
    from medistill.teachers.litemedsam.teacher import LiteMedSAMTeacher

    backend = resolved_backend(runtime.backend)
    batch = runtime.encode_batch or DEFAULT_ENCODE_BATCH[backend]
    return LiteMedSAMTeacher(argument, backend=backend, precision=runtime.precision, encode_batch=batch,
                             threads=runtime.threads, resize=runtime.resize)


def _grabcut(argument: str | None) -> Teacher:
    from medistill.teachers.grabcut import GrabCutTeacher

    if argument:
        raise MedistillError(f"teacher 'grabcut' takes no argument, got 'grabcut:{argument}'")
    return GrabCutTeacher()


register_teacher("litemedsam", _litemedsam, runtime=True)
register_teacher("grabcut", _grabcut)

# keras-hub SAM teachers register themselves when their module exists.
try:
    importlib.import_module("medistill.teachers.sam")
except ModuleNotFoundError as _error:  # pragma: no cover - optional module
    if _error.name != "medistill.teachers.sam":
        raise
