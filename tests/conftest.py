"""Test-wide settings: keep caches inside a temporary home, keep TensorFlow quiet."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_home = tempfile.mkdtemp(prefix="medistill-test-home-")
atexit.register(shutil.rmtree, _home, ignore_errors=True)  # this session's own folder, gone at exit
os.environ.setdefault("KERAS_HOME", os.path.join(_home, "keras"))
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_home, "matplotlib"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


# -- multi-worker runs on localhost ----------------------------------------------------
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def run_workers(tmp_path):
    """Run ``python -m medistill *argv`` as a localhost multi-worker cluster.

    Each worker gets a ``TF_CONFIG`` naming all of them and writes its final weights to
    ``tmp_path/worker_weights`` (see ``medistill.train.session``); all must exit 0.
    """
    weights_dir = tmp_path / "worker_weights"

    def run(argv: list[str], workers: int = 2, timeout: int = 420,
            env: dict | None = None) -> list[subprocess.CompletedProcess]:
        addresses = [f"localhost:{port}" for port in _free_ports(workers)]
        logs = tmp_path / "worker_logs"
        logs.mkdir(exist_ok=True)
        processes, outputs = [], []
        for index in range(workers):
            worker_env = {**os.environ, **(env or {}),
                          "TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                                   "task": {"type": "worker", "index": index}}),
                          "MEDISTILL_WORKER_WEIGHTS_DIR": str(weights_dir)}
            out, err = (open(logs / f"worker-{index}.{kind}", "w+") for kind in ("out", "err"))
            outputs.append((out, err))
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "medistill", *argv], cwd=REPO_ROOT, env=worker_env,
                stdout=out, stderr=err, text=True))
        deadline = time.monotonic() + timeout
        try:
            # A worker that fails leaves the others waiting in a collective: stop them all then.
            while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
                if any(p.poll() not in (None, 0) for p in processes):
                    break
                time.sleep(0.5)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
        results = []
        for process, (out, err) in zip(processes, outputs):
            texts = []
            for handle in (out, err):
                handle.seek(0)
                texts.append(handle.read())
                handle.close()
            results.append(subprocess.CompletedProcess(process.args, process.returncode, *texts))
        if any(r.returncode != 0 for r in results):
            timed_out = time.monotonic() >= deadline
            report = "\n".join(f"--- worker {i} (exit status {r.returncode}), end of its stderr:\n{r.stderr[-3000:]}"
                               for i, r in enumerate(results))
            pytest.fail(f"{'timed out after %d s' % timeout if timed_out else 'a worker failed'}:\n{report}")
        return results

    run.weights_dir = weights_dir
    return run


def _read_worker_weights(directory: Path) -> list[list]:
    import h5py

    files = sorted(Path(directory).glob("worker-*.weights.h5"))
    assert files, f"no worker weight files in {directory}"
    result = []
    for path in files:
        arrays = []
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda name, obj: arrays.append((name, obj[()]))
                              if isinstance(obj, h5py.Dataset) else None)
        result.append([value for _, value in sorted(arrays, key=lambda item: item[0])])
    return result


@pytest.fixture
def read_worker_weights():
    """``read(directory) -> [[arrays of worker 0], [arrays of worker 1], ...]``."""
    return _read_worker_weights


def _wait_for_epochs(run: Path, epochs: int, process: subprocess.Popen, timeout: float = 300) -> None:
    import time

    import pandas as pd

    deadline = time.time() + timeout
    while time.time() < deadline:
        history = Path(run) / "history.csv"
        if history.exists() and len(pd.read_csv(history)) >= epochs:
            return
        if process.poll() is not None:
            raise AssertionError("training ended before it could be killed")
        time.sleep(0.1)
    raise AssertionError("training did not reach the kill point in time")


@pytest.fixture
def wait_for_epochs():
    """``wait(run_dir, epochs, process)``: block until ``history.csv`` has ``epochs`` rows (to kill -9 then)."""
    return _wait_for_epochs
