"""Run folders: created once, refused when they hold another run, resumed otherwise.

Safety rules (``docs/safety.md``):

* A folder is a run folder of a command when it holds that command's
  :data:`MARKER_NAME` (written when the run is created) or, for runs made before the
  marker existed, a ``config.json`` with exactly that command's settings.
* ``--overwrite`` empties only such a folder; a folder that holds anything else is
  refused with a message naming it, and nothing is deleted.
* One process at a time writes a run folder: :data:`LOCK_NAME` holds its PID
  (:mod:`medistill.locking`); a second writer is refused, a stale lock is taken over.
* A run whose start failed before its first checkpoint may be started again with other
  settings (nothing was trained); once a checkpoint exists, other settings are refused.
* At resume, a damaged newest checkpoint (a truncated file) is moved to
  ``checkpoints/damaged/`` and the previous one is used, with a warning.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from medistill.errors import CheckpointError, MedistillError
from medistill.fileio import write_json_atomic
from medistill.locking import LOCK_NAME, acquire_lock, check_lock, release_lock

log = logging.getLogger("medistill.train")

CONFIG_NAME = "config.json"
MARKER_NAME = ".medistill-run.json"
CHECKPOINTS = "checkpoints"

# The command that writes each kind of run, for messages.
COMMANDS = {
    "TrainConfig": "medistill train",
    "DistillConfig": "medistill distill",
    "MedDistillConfig": "meddistill.py (medistill meddistill)",
    "MedDistillRounds": "meddistill.py --rounds (medistill meddistill --rounds)",
}


def _command(kind: str | None) -> str:
    return COMMANDS.get(kind or "", kind or "an unknown command")


def run_kind(run_dir: Path) -> str | None:
    """The config class name of the medistill run in ``run_dir``, or None when it holds none."""
    marker = run_dir / MARKER_NAME
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if isinstance(kind, str):
            return kind
    saved = run_dir / CONFIG_NAME
    if saved.is_file():  # a run written before the marker existed: recognise it by its settings
        try:
            keys = set(json.loads(saved.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        # The config class that has every saved setting and all its required ones; of
        # several (a TrainConfig's settings are a DistillConfig's too), the closest.
        fits = [(len(fields - keys), kind) for kind, (fields, required) in _known_fields().items()
                if keys <= fields and required <= keys]
        return min(fits)[1] if fits else None
    return None


# Config classes of the commands that write run folders, registered by their own modules
# (this lower layer never imports the trainers above it).
_RUN_CONFIGS: dict[str, type] = {}


def register_run_config(config_cls: type) -> type:
    """Make runs of ``config_cls`` recognisable by their ``config.json`` (usable as a decorator)."""
    _RUN_CONFIGS[config_cls.__name__] = config_cls
    return config_cls


def _known_fields() -> dict[str, tuple[set[str], set[str]]]:
    """``{config class name: (its settings, the settings without a default)}``."""
    from dataclasses import MISSING, fields

    return {name: ({f.name for f in fields(cls)},
                   {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING})
            for name, cls in _RUN_CONFIGS.items()}


def _own_entries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.name != LOCK_NAME]


def check_run_folder(out: str | Path, config_cls: type, overwrite: bool) -> None:
    """Refuse, before anything is written, an ``--out`` this command may not use.

    ``out`` may be missing, empty, or a run of ``config_cls``'s command that no other live
    process is writing; anything else is refused (with ``--overwrite`` too: it replaces
    only runs of the same command).
    """
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise MedistillError(f"--out {run_dir} is a file; give a folder for the run")
    if not run_dir.is_dir():
        return
    check_lock(run_dir / LOCK_NAME, what=f"run folder {run_dir}")
    if not _own_entries(run_dir):
        return
    kind = run_kind(run_dir)
    wanted = config_cls.__name__
    if kind is None:
        raise MedistillError(
            f"--out {run_dir} is not empty and is not a medistill run folder (no {CONFIG_NAME} of "
            f"{_command(wanted)}). medistill never deletes or mixes with files it did not write"
            f"{' (--overwrite replaces only its own runs)' if overwrite else ''}: choose a new or "
            "empty --out folder.")
    if kind != wanted:
        raise MedistillError(
            f"--out {run_dir} holds a run of {_command(kind)}, not of {_command(wanted)}; "
            f"{'--overwrite replaces only a run of the same command. ' if overwrite else ''}"
            "Choose another --out folder, or delete that run yourself if you no longer need it.")


def _empty_run(run_dir: Path) -> None:
    """Delete what a run wrote in ``run_dir`` (every entry but the lock this process holds)."""
    log.info("--overwrite: deleting the earlier run in %s", run_dir)
    for entry in _own_entries(run_dir):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def prepare_run_folder(config, config_cls) -> bool:
    """Create or reopen ``config.out``; return True when an earlier run is resumed.

    The folder is checked (:func:`check_run_folder`) before anything is written, then
    locked for this process (released by :func:`release_run_folder`, by closing the log
    handler of :func:`add_file_log`, or at exit). A folder that holds a run with different
    settings (other than the ones listed in ``RESUMABLE_CHANGES``) is refused unless
    ``config.overwrite`` is set, in which case it is emptied first, or unless that run
    never wrote a checkpoint (a failed start), in which case it starts again.
    """
    run_dir = Path(config.out)
    check_run_folder(run_dir, config_cls, config.overwrite)
    lock = acquire_lock(run_dir / LOCK_NAME, what=f"run folder {run_dir}")
    try:
        check_run_folder(run_dir, config_cls, config.overwrite)  # again, now that it is ours
        if config.overwrite and _own_entries(run_dir):
            _empty_run(run_dir)
        saved = run_dir / CONFIG_NAME
        resumed = False
        started = _has_checkpoint(run_dir)
        if saved.exists() and not started:
            try:
                config_cls.load(saved)
            except MedistillError as error:  # a start that failed while writing it
                log.info("%s: replacing an unreadable %s of a run that never trained (%s)", run_dir,
                         CONFIG_NAME, error)
                saved.unlink()
        if saved.exists():
            previous = config_cls.load(saved)
            changed = config.differences(previous)
            if changed and started:
                raise MedistillError(
                    f"{run_dir} holds a run with other settings ({', '.join(changed)} differ). "
                    "Use another --out folder, or --overwrite to replace that run.")
            if changed:
                log.info("%s holds a run that never finished an epoch (%s differ): starting it again with "
                         "the new settings", run_dir, ", ".join(changed))
            resumed = started
            if resumed:
                repair_checkpoints(run_dir / CHECKPOINTS)
        write_json_atomic(run_dir / MARKER_NAME, {"medistill": "run", "kind": config_cls.__name__,
                                                  "command": _command(config_cls.__name__)})
        write_json_atomic(saved, config.to_dict())
    except BaseException:
        release_lock(lock)
        raise
    return resumed


def release_run_folder(out: str | Path) -> None:
    """Give up this process's lock on the run folder ``out`` (a no-op when it holds none)."""
    release_lock(Path(out) / LOCK_NAME)


def _has_checkpoint(run_dir: Path) -> bool:
    folder = run_dir / CHECKPOINTS
    return folder.is_dir() and any(folder.glob("*.index"))


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_readable(prefix: str) -> str | None:
    """None when every tensor of the checkpoint ``prefix`` reads back, else the error."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # TF raises DataLossError, OutOfRangeError, NotFoundError, ...
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def repair_checkpoints(folder: str | Path) -> str | None:
    """Make the newest readable checkpoint in ``folder`` the one a resume uses.

    Damaged newer checkpoints (truncated or missing files) are moved to
    ``folder/damaged/`` with a warning that names them. Returns the checkpoint prefix to
    resume from (None when the folder holds none); raises :class:`CheckpointError` when
    every checkpoint is damaged.
    """
    import tensorflow as tf

    folder = Path(folder)
    indexes = sorted(folder.glob("ckpt-*.index"), key=lambda p: _number(p.name))
    if not indexes:
        return None
    state = tf.train.get_checkpoint_state(str(folder))
    listed = [str(folder / Path(p).name) for p in state.all_model_checkpoint_paths] if state else []
    prefixes = sorted({str(p.with_suffix("")) for p in indexes} | set(listed), key=lambda p: _number(Path(p).name))
    damaged: list[tuple[str, str]] = []
    good: str | None = None
    for prefix in reversed(prefixes):
        problem = _checkpoint_readable(prefix)
        if problem is None:
            good = prefix
            break
        damaged.append((prefix, problem))
    if good is None:
        names = ", ".join(Path(p).name for p, _ in damaged)
        raise CheckpointError(
            f"every checkpoint in {folder} is damaged ({names}: {damaged[0][1]}); the run cannot resume. "
            "Pass --overwrite to start it again (it deletes this run folder), or use a new --out folder.")
    if damaged:
        aside = folder / "damaged"
        aside.mkdir(exist_ok=True)
        for prefix, problem in damaged:
            for file in folder.glob(Path(prefix).name + ".*"):
                file.replace(aside / file.name)
            log.warning("checkpoint %s is damaged (%s); moved to %s, resuming from the previous checkpoint %s",
                        prefix, problem, aside, Path(good).name)
        kept = [p for p in prefixes if p not in {d for d, _ in damaged}]
        tf.compat.v1.train.update_checkpoint_state(str(folder), good, all_model_checkpoint_paths=kept)
    return good


def _number(name: str) -> int:
    digits = name.split("ckpt-", 1)[-1].split(".", 1)[0]
    return int(digits) if digits.isdigit() else -1


# --------------------------------------------------------------------------- the log


class _RunLogHandler(logging.FileHandler):
    """The run's log file; closing it also releases the run folder's lock."""

    def __init__(self, path: Path, run_dir: Path) -> None:
        super().__init__(path)
        self._run_dir = run_dir

    def close(self) -> None:
        try:
            super().close()
        finally:
            release_run_folder(self._run_dir)


def add_file_log(run_dir: str | Path, name: str = "train.log") -> logging.Handler:
    """Log ``medistill.*`` messages to a readable text file in the run folder.

    Closing the returned handler (as :func:`medistill.train.session.open_run` does when
    the run ends) also releases this process's lock on the folder.
    """
    handler = _RunLogHandler(Path(run_dir) / name, Path(run_dir))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("medistill").addHandler(handler)
    return handler
