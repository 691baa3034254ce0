"""One writer per folder: a lock file holding the writer's PID.

:func:`acquire_lock` creates ``LOCK`` with ``O_CREAT | O_EXCL`` and writes
``{"pid": …, "host": …}`` into it. A second process that finds a lock of a live
process is refused with a :class:`LockedError` naming the holder's PID; a lock left by a
process that no longer runs (killed with ``kill -9``) is taken over with a log line.
A lock of another host cannot be checked, so it is respected until a person deletes it.
The holding process may acquire its own lock again (re-entrant; one release frees it).

Example::

    lock = acquire_lock(Path("runs/a") / LOCK_NAME, what="run folder runs/a")
    try:
        ...  # write runs/a
    finally:
        release_lock(lock)
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import socket
from pathlib import Path

from medistill.errors import MedistillError

log = logging.getLogger("medistill")

LOCK_NAME = ".medistill.lock"

# Locks this process holds, released at exit if nobody released them before.
_HELD: set[Path] = set()


class LockedError(MedistillError):
    """Another live process holds the lock."""


def _host() -> str:
    return socket.gethostname()


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux), to tell a reused PID apart."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True when a process with this PID runs on this machine (a zombie does not count).

    With ``started`` (from :func:`process_start`), a process that reuses the PID does not count.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it is someone else's
        pass
    except OSError:
        return False
    fields = _proc_stat(pid)
    if fields and fields[0] == "Z":  # exited, not yet reaped by its parent
        return False
    if started is not None and fields is not None and process_start(pid) != started:
        return False
    return True


def read_lock(path: Path) -> dict | None:
    """The holder recorded in a lock file (``{"pid", "host"}``), or None when unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    return data


def holder_alive(holder: dict | None) -> bool:
    """Whether a recorded holder may still be running (another host's always may)."""
    if holder is None:
        return False
    if holder.get("host") not in (None, _host()):
        return True
    started = holder.get("started")
    return pid_alive(int(holder["pid"]), started if isinstance(started, int) else None)


def _create(path: Path) -> bool:
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as stream:
        json.dump({"pid": os.getpid(), "host": _host(), "started": process_start(os.getpid())}, stream)
    return True


def _ours(holder: dict | None) -> bool:
    return holder is not None and holder.get("pid") == os.getpid() and holder.get("host") in (None, _host())


def _locked_error(path: Path, holder: dict, what: str) -> LockedError:
    host = holder.get("host")
    where = f" on {host}" if host and host != _host() else ""
    return LockedError(
        f"{what} is in use by another medistill process (PID {holder['pid']}{where}; lock file "
        f"{path}). Wait until it has finished or stop it, then run the command again; or choose "
        "another folder. Two processes writing one folder would mix their files.")


def check_lock(path: str | os.PathLike, what: str) -> None:
    """Refuse, without writing anything, when another live process holds the lock ``path``."""
    path = Path(path)
    holder = read_lock(path) if path.is_file() else None
    if holder is not None and not _ours(holder) and holder_alive(holder):
        raise _locked_error(path, holder, what)


def acquire_lock(path: str | os.PathLike, what: str) -> Path:
    """Take the lock file ``path`` for this process; ``what`` names the locked thing in messages.

    Raises :class:`LockedError` when a live process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        if _create(path):
            _HELD.add(path.resolve())
            return path
        holder = read_lock(path)
        if holder is None:
            # Being written this very moment, or damaged: look again before judging.
            import time

            time.sleep(0.2)
            holder = read_lock(path)
        if _ours(holder):
            _HELD.add(path.resolve())
            return path  # ours already
        if holder_alive(holder):
            raise _locked_error(path, holder, what)
        log.warning("taking over the lock %s of %s: its process (PID %s) no longer runs", path, what,
                    holder.get("pid") if holder else "unknown")
        try:
            if read_lock(path) == holder:  # nobody took it over in between
                path.unlink()
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise MedistillError(f"cannot remove the stale lock {path}: {error}") from error
    raise LockedError(f"{what}: could not take the lock {path} (other processes keep taking it); try again")


def release_lock(path: str | os.PathLike) -> None:
    """Delete the lock file if this process holds it (a no-op otherwise)."""
    path = Path(path)
    _HELD.discard(path.resolve())
    holder = read_lock(path)
    if _ours(holder):
        try:
            path.unlink()
        except OSError:
            pass


def holds_lock(path: str | os.PathLike) -> bool:
    """Whether this process holds the lock file ``path``."""
    return Path(path).resolve() in _HELD


@atexit.register
def _release_all() -> None:
    for path in list(_HELD):
        release_lock(path)
