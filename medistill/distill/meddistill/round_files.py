"""The files of a rounds run (``--rounds K``): ``OUT/rounds/<k>/…`` and each round's configuration.

The layout is described in :mod:`medistill.distill.meddistill.rounds`.

Example::

    paths = round_paths("runs/r3", 2)       # runs/r3/rounds/2/{boxes.json, teacher_cache.h5, run/, …}
    one = round_config(config, paths)       # the one-round MedDistillConfig of round 2
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from medistill.distill.meddistill.config import MedDistillConfig
from medistill.errors import MedistillError

ROUNDS_DIR = "rounds"
BOXES_NAME = "boxes.json"
CACHE_NAME = "teacher_cache.h5"
RUN_NAME = "run"
HELDOUT_NAME = "heldout_masks.npz"
RECORD_NAME = "round.json"
CSV_NAME = "rounds.csv"
LOG_NAME = "rounds.log"
SOURCE_KIND = "student-round"
# Copied from the selected round's run folder into OUT (student.keras and preprocessing.json
# are required; saved_model/ is copied as a folder).
EXPORTED_FILES = ("student.keras", "preprocessing.json", "history.csv", "curves.png", "loss_terms.png")
CSV_COLUMNS = ("round", "boxes", "replaced", "kept", "added", "teacher_rejected", "images_gaining",
               "images_losing", "confirmed_negatives", "ambiguous_negatives", "score", "val_dice",
               "agreement_previous", "agreement_first_teacher", "decision", "selected")
SELECTION_RULE = ("the round with the highest held-out agreement Dice between its student and its teacher "
                  "(original resolution); the earlier round on a tie; a collapsed round only if all are")


@dataclass(frozen=True)
class StopRule:
    """When the rounds end early (see the module docstring)."""

    margin: float = 0.01      # stop when the score gains less than this over the previous round
    converged: float = 0.98   # stop when two successive students agree at least this much

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RoundPaths:
    """The files of round ``number`` under ``OUT/rounds/<number>/``."""

    folder: Path
    number: int

    @property
    def boxes(self) -> Path:
        return self.folder / BOXES_NAME

    @property
    def cache(self) -> Path:
        return self.folder / CACHE_NAME

    @property
    def run(self) -> Path:
        return self.folder / RUN_NAME

    @property
    def heldout(self) -> Path:
        return self.folder / HELDOUT_NAME

    @property
    def record(self) -> Path:
        return self.folder / RECORD_NAME


def round_paths(out: str | Path, number: int) -> RoundPaths:
    """The paths of round ``number`` (1-based) of the rounds run in ``out``."""
    return RoundPaths(Path(out) / ROUNDS_DIR / str(number), number)


def round_config(config: MedDistillConfig, paths: RoundPaths) -> MedDistillConfig:
    """The one-round configuration :func:`train_meddistill` runs for round ``paths.number``.

    Round 1 keeps ``--cache`` (a cache of the detector's boxes) and ``--init-from`` when
    given; round ``k + 1`` starts from round ``k``'s run folder.
    """
    first = paths.number == 1
    cache = config.cache if first and config.cache else str(paths.cache)
    init_from = config.init_from if first else str(round_paths(config.out, paths.number - 1).run)
    return dataclasses.replace(config, rounds=1, out=str(paths.run), boxes=str(paths.boxes), cache=cache,
                               init_from=init_from, overwrite=False)


def read_json(path: Path) -> dict:
    """A round's JSON record; a damaged one names the file and what to do."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MedistillError(f"{path} cannot be read ({error}); delete it and rerun to redo that step") from error
