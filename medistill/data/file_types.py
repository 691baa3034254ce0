"""The file types the data layer reads, and the error for a file it cannot use.

:data:`IMAGE_EXTENSIONS` lists what :mod:`medistill.data.io` reads (``.nii.gz`` counts as
one extension); :func:`file_extension` and :func:`strip_extension` give a file's known
extension and its stem. :class:`UnreadableFileError` (a ``DataError``) names the file,
says what is wrong and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from medistill.errors import DataError, DataProblem

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".nii", ".nii.gz",
)
VOLUME_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
RASTER_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff")

# What to do with a file of a type or content the readers cannot use.
CONVERT_HINT = "convert it to PNG, TIFF, .npy or NIfTI"


class UnreadableFileError(DataError):
    """A file that cannot be used; ``problem`` holds the path, the reason and the fix."""

    def __init__(self, path: str | os.PathLike, what: str, fix: str = "") -> None:
        self.problem = DataProblem(Path(path), what, fix)
        message = f"cannot read {path}: {what}"
        super().__init__(f"{message} ({fix})" if fix else message)


def file_extension(path: str | os.PathLike) -> str:
    """The known extension of ``path`` in lower case (``".nii.gz"`` counts as one), or ``""``."""
    name = Path(path).name.lower()
    for extension in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if name.endswith(extension) and len(name) > len(extension):
            return extension
    return ""


def strip_extension(path: str | os.PathLike) -> str:
    """The file name without its known extension: ``"a.nii.gz"`` → ``"a"``."""
    name = Path(path).name
    extension = file_extension(name)
    return name[: len(name) - len(extension)] if extension else name


def is_volume_file(path: str | os.PathLike) -> bool:
    """True for NIfTI files (``.nii``, ``.nii.gz``)."""
    return file_extension(path) in VOLUME_EXTENSIONS
