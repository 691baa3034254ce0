"""What ``medistill predict`` reads and what it writes for each input.

An input is one file (an image, or a NIfTI volume) or a folder of them (files with a
known extension, hidden files ignored, sorted by name; sub-folders are not searched).
Each input file gets outputs named by its stem:

* a 2-D image ``STEM.(png|jpg|tif|npy…)`` → mask ``OUT/STEM.png`` and, with
  ``--probabilities``, ``OUT/probabilities/STEM.npy`` (float32 ``(H, W)`` or ``(H, W, K)``);
* a volume ``STEM.nii[.gz]`` → label volume ``OUT/STEM.nii[.gz]`` (same ending) and
  ``OUT/probabilities/STEM.nii[.gz]`` (float32, ``(X, Y, Z)`` or ``(X, Y, Z, K)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medistill.data.io import IMAGE_EXTENSIONS, file_extension, is_volume_file, strip_extension
from medistill.errors import DataError, DataProblem, MedistillError, problems_error

PROBABILITIES_DIR = "probabilities"


@dataclass(frozen=True)
class InputFile:
    """One file to segment and the names of its outputs."""

    path: Path
    stem: str
    is_volume: bool

    @property
    def mask_name(self) -> str:
        return self.stem + (file_extension(self.path) if self.is_volume else ".png")

    @property
    def probability_name(self) -> str:
        return f"{PROBABILITIES_DIR}/{self.stem}" + (file_extension(self.path) if self.is_volume else ".npy")

    def outputs(self, probabilities: bool) -> list[str]:
        """The output names (relative to OUT) this file gets."""
        return [self.mask_name] + ([self.probability_name] if probabilities else [])


def find_inputs(source: str | os.PathLike) -> list[InputFile]:
    """The input files of ``-i``: one file, or every image/volume in a folder (sorted)."""
    path = Path(source)
    if path.is_file():
        if not file_extension(path):
            raise DataError(f"-i {path}: unknown file type (use one of {', '.join(IMAGE_EXTENSIONS)})")
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and not p.name.startswith(".") and file_extension(p))
        if not files:
            raise DataError(f"-i {path} holds no images or volumes (expected files ending in "
                            f"{', '.join(IMAGE_EXTENSIONS)})")
    else:
        raise DataError(f"-i {path} does not exist (give a folder of images or volumes, or one file)")
    inputs = [InputFile(p, strip_extension(p), is_volume_file(p)) for p in files]
    _refuse_shared_outputs(inputs)
    return inputs


def _refuse_shared_outputs(inputs: list[InputFile]) -> None:
    """``a.png`` and ``a.tif`` would both write ``OUT/a.png``: refuse before anything is written."""
    by_name: dict[str, list[InputFile]] = {}
    for item in inputs:
        by_name.setdefault(item.mask_name, []).append(item)
    problems = [DataProblem(group[0].path, f"its output {name} would also be written for "
                            + ", ".join(str(other.path) for other in group[1:]), "rename one of the files")
                for name, group in by_name.items() if len(group) > 1]
    if problems:
        raise problems_error(problems, "several inputs would write the same output:")


def input_root(source: str | os.PathLike) -> Path:
    """The folder the inputs are in (``-i`` itself, or the folder of a single file)."""
    path = Path(source).expanduser().resolve()
    return path if path.is_dir() else path.parent


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(out: str | os.PathLike, source: str | os.PathLike) -> None:
    """Refuse ``-o`` equal to, inside, or holding the input folder: inputs are never outputs."""
    out_path, in_path = Path(out).expanduser().resolve(), input_root(source)
    if _inside(out_path, in_path) or _inside(in_path, out_path):
        where = "is" if out_path == in_path else "is inside" if _inside(out_path, in_path) else "contains"
        raise MedistillError(f"-o {out} {where} the input folder {in_path}: masks named like the inputs would "
                             f"be written among them. Choose an output folder outside {in_path}.")
    if out_path.exists() and not out_path.is_dir():
        raise MedistillError(f"-o {out} is a file; give a folder for the masks")


def shard(inputs: list[InputFile], part_id: int, num_parts: int) -> list[InputFile]:
    """Part ``part_id`` of ``num_parts`` (every ``num_parts``-th file), for parallel processes."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise MedistillError(f"--part-id must lie in 0..--num-parts-1 and --num-parts be at least 1, "
                             f"got --part-id {part_id} --num-parts {num_parts}")
    return inputs[part_id::num_parts]
