"""The single-writer lock of a teacher cache: ``<cache>.lock`` created with ``O_EXCL``.

It holds ``"<pid> <host>"``; a second writer is refused naming the holder's PID; a lock
left by a dead process on this host is taken over (logged). Shard caches have their own
locks, so shards of one cache are written by several processes at once, each alone on
its file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from medistill.errors import MedistillError

LOG = logging.getLogger("medistill.teachers")


def lock_path(cache_path: str | os.PathLike) -> Path:
    """The lock file of a cache: ``<cache>.lock``."""
    cache_path = Path(cache_path)
    return cache_path.with_name(cache_path.name + ".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> tuple[int | None, str]:
    try:
        parts = path.read_text().split()
    except FileNotFoundError:
        return None, ""
    try:
        return int(parts[0]), parts[1] if len(parts) > 1 else ""
    except (IndexError, ValueError):
        return None, ""


@contextlib.contextmanager
def cache_lock(cache_path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<cache>.lock`` while the body runs; refuse when a live process holds it.

    The lock file is created with ``O_CREAT | O_EXCL`` and holds ``"<pid> <host>"``. A
    lock of a process that no longer runs on this host is taken over with a log line.
    """
    path = lock_path(cache_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me, host = os.getpid(), socket.gethostname()
    for attempt in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, holder_host = _read_holder(path)
            if pid is None:  # being written by its creator this instant, or emptied
                if attempt >= 20:
                    raise MedistillError(f"{path}: the lock file of {cache_path} cannot be read; if no "
                                         "`medistill teach` or training runs on this cache, delete it") from None
                time.sleep(0.05)
                continue
            if holder_host not in ("", host) or _pid_alive(pid):
                where = f" on {holder_host}" if holder_host not in ("", host) else ""
                raise MedistillError(
                    f"{cache_path} is being written by another process (PID {pid}{where}, lock file {path}); "
                    "wait for it to finish, or use another --out. If that process no longer runs, "
                    f"delete {path}") from None
            _take_over(path, pid)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{me} {host}\n")
        break
    else:  # pragma: no cover - fifty lost races in a row
        raise MedistillError(f"{path}: could not take the lock of {cache_path}; try again")
    try:
        yield path
    finally:
        pid, _ = _read_holder(path)
        if pid == me:
            path.unlink(missing_ok=True)


def _take_over(path: Path, dead_pid: int) -> None:
    """Remove the stale lock of ``dead_pid`` unless another process replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)  # atomic: of several takers, one moves this very file
    except FileNotFoundError:
        return
    pid, _ = _read_holder(aside)
    if pid == dead_pid:
        LOG.warning("teach: taking over the stale lock %s of PID %d (no longer running)", path, dead_pid)
        aside.unlink(missing_ok=True)
        return
    try:  # it was a live lock made after we looked: put it back unless someone holds a new one
        os.link(aside, path)
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)
