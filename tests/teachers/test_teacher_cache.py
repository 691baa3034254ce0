"""The teacher cache: contents, kill-and-resume, stale detection. GrabCut keeps it fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from medistill.boxes.boxes_file import write_boxes
from medistill.boxes.oracle import boxes_from_masks
from medistill.data.phantoms import generate_phantoms
from medistill.errors import MedistillError
from medistill.teachers.cache import build_cache
from medistill.teachers.grabcut import GrabCutTeacher

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def data(tmp_path):
    generate_phantoms(tmp_path / "ph", n=12, size=64, seed=1)
    boxes = boxes_from_masks(tmp_path / "ph" / "masks", tmp_path / "ph" / "images")
    write_boxes(tmp_path / "boxes.json", boxes)
    return tmp_path / "ph" / "images", tmp_path / "boxes.json", boxes


def test_cache_contents(data, tmp_path):
    image_dir, boxes_path, boxes = data
    summary = build_cache(GrabCutTeacher(), image_dir, boxes_path, tmp_path / "c.h5", progress=False)
    assert summary["written"] == len(boxes.images) and summary["done_before"] == 0
    with h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["teacher"] == "grabcut" and f.attrs["format"] == "medistill.teacher_cache"
        assert len(f.attrs["boxes_sha256"]) == 64 and json.loads(f.attrs["preprocessing"])["iterations"] == 5
        for entry in boxes.images:
            g = f["images"][entry.stem]
            n = len(entry.boxes)
            assert g.attrs["done"] and g.attrs["n_boxes"] == n
            assert g["masks"].shape == (n, entry.height, entry.width)
            assert g["fused"].shape == (entry.height, entry.width)
            if n:
                np.testing.assert_allclose(g["fused"][()], g["masks"][()].max(axis=0))
                assert g["masks"].compression == "gzip"
            assert g["uncertainties"].shape == (n,) and g["boxes"].shape == (n, 4)
            assert "scores" not in g and "features" not in g
    again = build_cache(GrabCutTeacher(), image_dir, boxes_path, tmp_path / "c.h5", progress=False)
    assert again["written"] == 0 and again["done_before"] == len(boxes.images)


def test_stale_cache_is_refused_then_rebuilt(data, tmp_path):
    image_dir, boxes_path, boxes = data
    out = tmp_path / "c.h5"
    build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False)

    class Other(GrabCutTeacher):
        name = "other"

    with pytest.raises(MedistillError, match="teacher: cache has 'grabcut', now 'other'.*--overwrite"):
        build_cache(Other(), image_dir, boxes_path, out, progress=False)
    changed = next(entry for entry in boxes.images if entry.boxes)
    changed.boxes = changed.boxes[:0]
    write_boxes(boxes_path, boxes)
    with pytest.raises(MedistillError, match="boxes_sha256"):
        build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False)
    summary = build_cache(GrabCutTeacher(), image_dir, boxes_path, out, overwrite=True, progress=False)
    assert summary["written"] == len(boxes.images)


def test_killed_run_resumes(data, tmp_path):
    image_dir, boxes_path, boxes = data
    out = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "medistill", "-v", "teach", "--image_dir", str(image_dir),
               "--boxes", str(boxes_path), "--teacher", "grabcut", "--out", str(out), "--no-progress"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.time() + 120
    killed = False
    for line in process.stderr:
        if "teach: done" in line and int(line.rsplit("(", 1)[1].split("/")[0]) >= 3:
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        assert time.time() < deadline
    process.wait(timeout=30)
    if not killed:
        pytest.skip("the run finished before it could be killed")
    summary = build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False)
    assert 3 <= summary["done_before"] < len(boxes.images)
    assert summary["done_before"] + summary["written"] == len(boxes.images)
    build_cache(GrabCutTeacher(), image_dir, boxes_path, tmp_path / "clean.h5", progress=False)
    with h5py.File(out) as f, h5py.File(tmp_path / "clean.h5") as g:
        assert sorted(f["images"]) == sorted(g["images"])
        for stem in g["images"]:
            np.testing.assert_array_equal(f["images"][stem]["fused"][()], g["images"][stem]["fused"][()])


def test_cli_teach_reports_and_refuses(data, tmp_path, capsys):
    from medistill.cli import main

    image_dir, boxes_path, _ = data
    args = ["teach", "--image_dir", str(image_dir), "--boxes", str(boxes_path), "--teacher", "grabcut",
            "--out", str(tmp_path / "cli.h5"), "--no-progress"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == 12
    assert main(args[:5] + ["--teacher", "nope"] + args[7:]) == 2
    assert "unknown teacher" in capsys.readouterr().err
