"""Teachers: frozen foundation models that turn an image and its boxes into soft masks.

Importing this package is cheap (no TensorFlow, no torch); heavy imports happen when a
teacher is built. See :mod:`medistill.teachers.base` for the contract and
:func:`medistill.teachers.registry.build_teacher` for the names.
"""

from medistill.teachers.base import Teacher, TeacherOutput, clip_boxes

__all__ = ["Teacher", "TeacherOutput", "clip_boxes"]
