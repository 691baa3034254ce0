"""A data-set folder's layout: its splits, and the folders and files the pairing reads.

:func:`find_splits` accepts ``root/images`` (+ ``masks``) as one split ``"all"``, or
``root/{train,val,test}/images`` (+ ``masks``); a masks folder may hold one subfolder per
class. :func:`existing_folder` and :func:`image_files_in` are shared with the pairing in
:mod:`medistill.data.samples`.
"""

from __future__ import annotations

import os
from pathlib import Path

from medistill.data.io import IMAGE_EXTENSIONS, file_extension
from medistill.errors import DataError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
EXTENSION_LIST = ", ".join(IMAGE_EXTENSIONS)


def find_splits(root: str | os.PathLike) -> dict[str, tuple[Path, Path | None]]:
    """``{split: (images_dir, masks_dir or None)}`` for a data-set folder.

    ``root/images`` (+ ``root/masks``) gives one split named ``"all"``;
    ``root/{train,val,test}/images`` (+ ``masks``) gives the splits present.
    """
    root = existing_folder(root, "data set")
    flat = _split_folders(root)
    nested = {name: _split_folders(root / name, required=True)
              for name in SPLIT_NAMES if (root / name).is_dir()}
    if flat is not None and nested:
        raise DataError(f"{root} has both an images folder and split folders "
                        f"({', '.join(nested)}); keep one layout")
    if flat is not None:
        return {"all": flat}
    if nested:
        return nested  # type: ignore[return-value]
    raise DataError(_layout_message(root))


def _split_folders(folder: Path, required: bool = False) -> tuple[Path, Path | None] | None:
    images, masks = folder / "images", folder / "masks"
    if not images.is_dir():
        if required:
            raise DataError(f"the split folder {folder} has no 'images' folder "
                            f"(expected {images} and optionally {masks})")
        return None
    if not image_files_in(images):
        raise DataError(f"the image folder {images} holds no images (expected files ending "
                        f"in {EXTENSION_LIST})")
    if not masks.is_dir():
        return images, None
    if not _holds_masks(masks):
        raise DataError(f"the mask folder {masks} holds no masks; add them, or remove the "
                        "folder for an unlabelled set")
    return images, masks


def _holds_masks(folder: Path) -> bool:
    """Mask files directly in ``folder``, or in its visible subfolders (one folder per class)."""
    if image_files_in(folder):
        return True
    return any(path.is_dir() and not path.name.startswith(".") and _holds_masks(path)
               for path in folder.iterdir())


def _layout_message(root: Path) -> str:
    entries = sorted(path.name + ("/" if path.is_dir() else "") for path in root.iterdir()
                     if not path.name.startswith("."))
    seen = ", ".join(entries[:10]) + (", …" if len(entries) > 10 else "") or "nothing"
    return (f"{root} is not a data-set folder (it holds: {seen}). Expected either "
            f"{root}/images and {root}/masks, or {root}/train, {root}/val and/or "
            f"{root}/test, each with images/ and masks/ (masks optional for unlabelled data)")


def existing_folder(folder: str | os.PathLike, role: str) -> Path:
    """``folder`` as a path; a clear error naming its ``role`` when it is not a folder."""
    path = Path(folder)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"the {role} folder {path} {what} (check the path)")
    return path


def image_files_in(folder: Path) -> list[Path]:
    """Visible files with a known image extension, sorted by name."""
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and not path.name.startswith(".") and file_extension(path))
