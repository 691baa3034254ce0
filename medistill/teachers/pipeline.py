"""A three-stage pipeline: read ahead on one thread, compute in batches, write on another.

The teacher cache uses it so that reading and preprocessing the next images and writing
(compressing) the finished ones overlap with the model: NumPy, OpenCV, HDF5's gzip and
every inference runtime release the GIL for their heavy work. Order is kept: items are
computed and written in the order given. The first error of any stage stops the others
and is raised in the caller's thread; everything written before it stays written (the
cache then resumes from there).

Example::

    run_pipeline(entries, read=load, compute=lambda batch: [model(x) for x in batch],
                 write=save, batch=4)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

_DONE = object()


class _Stage(threading.Thread):
    """A daemon thread that records the first exception it meets."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            self.error = error


def _put(target: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set meanwhile; False when stopped."""
    while not stop.is_set():
        try:
            target.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_pipeline(items: Iterable[Any], read: Callable[[Any], Any], compute: Callable[[list[Any]], list[Any]],
                 write: Callable[[Any], None], batch: int = 1, ahead: int | None = None) -> int:
    """``write(result)`` for every result of ``compute(batch of read(item))``; returns how many were written.

    ``read`` runs on a reader thread up to ``ahead`` items (default ``2 * batch + 1``)
    before the model; ``compute`` runs on the calling thread on up to ``batch`` read
    items at a time and returns one result per item; ``write`` runs on a writer thread.
    """
    batch = max(1, int(batch))
    stop = threading.Event()
    ready: queue.Queue = queue.Queue(maxsize=ahead or 2 * batch + 1)
    done: queue.Queue = queue.Queue(maxsize=2 * batch)
    written = [0]

    def reading() -> None:
        for item in items:
            if not _put(ready, read(item), stop):
                return
        _put(ready, _DONE, stop)

    def writing() -> None:
        while True:
            result = done.get()
            if result is _DONE:
                return
            write(result)
            written[0] += 1

    reader, writer = _Stage(reading, "teach-reader"), _Stage(writing, "teach-writer")
    reader.start()
    writer.start()
    try:
        finished = False
        while not finished:
            chunk = []
            while len(chunk) < batch:
                item = _next(ready, reader, writer)
                if item is _DONE:
                    finished = True
                    break
                chunk.append(item)
            for result in compute(chunk) if chunk else []:
                if not _put_checked(done, result, writer):
                    break
        _put_checked(done, _DONE, writer)
        writer.join()
    finally:
        stop.set()
        if writer.is_alive():  # the caller's error: let the writer finish what it holds, then stop
            _put_checked(done, _DONE, writer)
            writer.join()
        reader.join(timeout=5)
    for stage in (writer, reader):
        if stage.error is not None:
            raise stage.error
    return written[0]


def _next(ready: queue.Queue, reader: _Stage, writer: _Stage) -> Any:
    """The next read item, or ``_DONE`` when the reader has stopped (its error, if any, is raised
    once what it read before has been computed and written); raises the writer's error at once."""
    while True:
        if writer.error is not None:
            raise writer.error
        try:
            return ready.get(timeout=0.1)
        except queue.Empty:
            if not reader.is_alive() and ready.empty():
                return _DONE


def _put_checked(done: queue.Queue, result: Any, writer: _Stage) -> bool:
    """Hand ``result`` to the writer; raises its error, False when it has stopped."""
    while writer.is_alive():
        try:
            done.put(result, timeout=0.1)
            return True
        except queue.Full:
            continue
    if writer.error is not None:
        raise writer.error
    return False
