"""The file barrier that keeps every worker's parent process waiting until every
worker's teacher child has exited (``medistill.distribute.file_barrier``)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from medistill.distribute import file_barrier, forget_arrival, task_names
from medistill.errors import MedistillError


def tf_config(monkeypatch, index: int, workers: int = 2) -> None:
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": [f"localhost:{2000 + i}" for i in range(workers)]},
        "task": {"type": "worker", "index": index}}))


def test_task_names_list_chief_and_workers(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert task_names() == ("worker-1", ["chief-0", "worker-0", "worker-1"])


def test_waits_for_every_worker_then_passes(monkeypatch, tmp_path):
    tf_config(monkeypatch, 0)
    passed = threading.Event()
    thread = threading.Thread(target=lambda: (file_barrier(tmp_path, "b", timeout_s=30, poll_s=0.01), passed.set()))
    thread.start()
    time.sleep(0.3)
    assert not passed.is_set()  # worker-1 has not arrived
    assert (tmp_path / ".b-worker-0").exists()
    (tmp_path / ".b-worker-1").write_text("1")
    thread.join(10)
    assert passed.is_set()


def test_an_earlier_runs_marker_is_forgotten_before_the_work(monkeypatch, tmp_path):
    tf_config(monkeypatch, 1)
    (tmp_path / ".b-worker-1").write_text("stale")
    (tmp_path / ".b-worker-0").write_text("other worker's, kept")
    forget_arrival(tmp_path, "b")
    assert not (tmp_path / ".b-worker-1").exists() and (tmp_path / ".b-worker-0").exists()
    forget_arrival(tmp_path / "missing", "b")  # no run folder yet: nothing to forget


def test_a_missing_worker_is_named_after_the_timeout(monkeypatch, tmp_path):
    tf_config(monkeypatch, 0, workers=3)
    (tmp_path / ".b-worker-2").write_text("2")
    with pytest.raises(MedistillError, match="worker-1 to finish 'b'"):
        file_barrier(tmp_path, "b", timeout_s=0.2, poll_s=0.01)


def test_one_worker_never_waits(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    file_barrier(tmp_path / "run", "b", timeout_s=0)
    assert not (tmp_path / "run").exists()
