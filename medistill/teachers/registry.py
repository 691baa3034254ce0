"""Teachers by name: ``build_teacher("litemedsam")``, extendable with :func:`register_teacher`.

A name is ``"<kind>"`` or ``"<kind>:<argument>"``; the factory registered for ``kind``
receives the argument (or None):

* ``litemedsam`` / ``litemedsam:/path/to.pth`` — LiteMedSAM in Keras (bundled or given
  checkpoint, converted once and cached);
* ``grabcut`` — OpenCV GrabCut (no weights);
* ``sam:<preset-or-dir>`` / ``tiny-sam`` — keras-hub SAM, when its module is present.

Example::

    register_teacher("mine", lambda argument: MyTeacher(argument))
    teacher = build_teacher("mine:option")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from medistill.errors import MedistillError
from medistill.teachers.base import Teacher

TeacherFactory = Callable[[str | None], Teacher]
_FACTORIES: dict[str, TeacherFactory] = {}


def register_teacher(name: str, factory: TeacherFactory) -> None:
    """Make ``build_teacher(name[:argument])`` call ``factory(argument)``; replaces an old entry."""
    if not name or ":" in name:
        raise ValueError(f"teacher name must be non-empty and without ':', got {name!r}")
    _FACTORIES[name] = factory


def available_teachers() -> list[str]:
    """Registered teacher kinds, sorted."""
    return sorted(_FACTORIES)


def build_teacher(spec: str) -> Teacher:
    """Build the teacher named by ``spec`` (``kind`` or ``kind:argument``)."""
    kind, sep, argument = str(spec).partition(":")
    if kind not in _FACTORIES:
        raise MedistillError(f"unknown teacher {spec!r}; available: {', '.join(available_teachers())} "
                             "(optionally as kind:argument, e.g. litemedsam:/path/to.pth)")
    return _FACTORIES[kind](argument if sep and argument else None)


def _litemedsam(argument: str | None) -> Teacher:
    from medistill.teachers.litemedsam.teacher import LiteMedSAMTeacher

    return LiteMedSAMTeacher(argument)


def _grabcut(argument: str | None) -> Teacher:
    from medistill.teachers.grabcut import GrabCutTeacher

    if argument:
        raise MedistillError(f"teacher 'grabcut' takes no argument, got 'grabcut:{argument}'")
    return GrabCutTeacher()


register_teacher("litemedsam", _litemedsam)
register_teacher("grabcut", _grabcut)

# keras-hub SAM teachers register themselves when their module exists.
try:
    importlib.import_module("medistill.teachers.sam")
except ModuleNotFoundError as _error:  # pragma: no cover - optional module
    if _error.name != "medistill.teachers.sam":
        raise
