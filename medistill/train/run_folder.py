"""Run folders: created once, refused when they hold another run, resumed otherwise."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from medistill.errors import MedistillError
from medistill.fileio import write_json_atomic

CONFIG_NAME = "config.json"


def prepare_run_folder(config, config_cls) -> bool:
    """Create or reopen ``config.out``; return True when an earlier run is resumed.

    A folder that holds a run with different settings (other than the ones listed in
    ``RESUMABLE_CHANGES``) is refused unless ``config.overwrite`` is set, in which case it
    is emptied first.
    """
    run_dir = Path(config.out)
    saved = run_dir / CONFIG_NAME
    if config.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    resumed = False
    if saved.exists():
        previous = config_cls.load(saved)
        changed = config.differences(previous)
        if changed:
            raise MedistillError(
                f"{run_dir} holds a run with other settings ({', '.join(changed)} differ). "
                "Use another --out folder, or --overwrite to replace that run."
            )
        resumed = (run_dir / "checkpoints").exists()
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise MedistillError(
            f"{run_dir} is not empty and holds no medistill run (no {CONFIG_NAME}). "
            "Choose an empty or new --out folder."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, config.to_dict())
    return resumed


def add_file_log(run_dir: str | Path, name: str = "train.log") -> logging.Handler:
    """Log ``medistill.*`` messages to a readable text file in the run folder."""
    handler = logging.FileHandler(Path(run_dir) / name)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("medistill").addHandler(handler)
    return handler
