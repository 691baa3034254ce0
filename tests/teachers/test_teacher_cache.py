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
from medistill.errors import MedistillError
from medistill.fileio import file_sha256
from medistill.teachers.cache import build_cache
from medistill.teachers.grabcut import GrabCutTeacher

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def data(phantom_set):
    return phantom_set(n=12, size=64, seed=1)


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


# --------------------------------------------------------------------------- format v2, reader, safety


def test_reader_entries_and_quality(data, tmp_path):
    from medistill.teachers.cache import VERSION, CacheEntry, CacheReader

    image_dir, boxes_path, boxes = data
    build_cache(GrabCutTeacher(), image_dir, boxes_path, tmp_path / "c.h5", progress=False)
    with CacheReader(tmp_path / "c.h5") as cache, h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["version"] == str(VERSION) == "2"
        assert cache.stems == sorted(e.stem for e in boxes.images) and cache.teacher == "grabcut"
        for entry in boxes.images:
            got = cache.entry(entry.stem)
            assert isinstance(got, CacheEntry) and got.file == entry.file and got.slice_index is None
            assert (got.width, got.height, got.n_boxes) == (entry.width, entry.height, len(entry.boxes))
            np.testing.assert_array_equal(got.fused, f[f"images/{entry.stem}/fused"][()])
            assert got.scores is None and got.features is None and got.feature_stride is None
            assert cache.feature_info(entry.stem) is None
            assert got.box_scores.shape == got.box_classes.shape == (len(entry.boxes),)
            assert got.sha256 == file_sha256(image_dir / entry.file)
            records = cache.quality(entry.stem)
            assert len(records) == len(entry.boxes)
            for i, record in enumerate(records):
                hard = cache.masks(entry.stem, i) > 0.5
                assert record.area == int(hard.sum()) and np.isnan(record.score)
                assert 0.0 <= record.fill <= 1.0 and (np.isnan(record.stability) or 0 <= record.stability <= 1)
        with pytest.raises(MedistillError, match=r"c\.h5.*'nope'"):
            cache.entry("nope")
    stem = boxes.images[0].stem
    with h5py.File(tmp_path / "c.h5", "a") as f:
        f[f"images/{stem}"].attrs["done"] = False
    with CacheReader(tmp_path / "c.h5") as cache:
        assert stem not in cache.stems
        with pytest.raises(MedistillError, match=rf"c\.h5.*{stem}.*unfinished"):
            cache.quality(stem)


def test_old_cache_version_is_refused(data, tmp_path):
    from medistill.teachers.cache import CacheReader

    image_dir, boxes_path, _ = data
    out = tmp_path / "c.h5"
    build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False)
    with h5py.File(out, "a") as f:
        f.attrs["version"] = "1"
    with pytest.raises(MedistillError, match="version 1.*version 2.*--overwrite"):
        build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False)
    with pytest.raises(MedistillError, match="version 1.*rebuild"):
        CacheReader(out)
    assert build_cache(GrabCutTeacher(), image_dir, boxes_path, out, overwrite=True, progress=False)["written"] == 12


def test_changed_image_is_caught(data, tmp_path):
    import shutil

    from medistill.data.phantoms import generate_phantoms

    image_dir, boxes_path, boxes = data
    out = tmp_path / "c.h5"
    build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False)
    # the same stems from another folder (other phantoms): refused, naming the first differing file
    generate_phantoms(tmp_path / "other", n=12, size=64, seed=2)
    with pytest.raises(MedistillError, match=r"other/images/phantom_0000\.png.*another --image_dir"):
        build_cache(GrabCutTeacher(), tmp_path / "other" / "images", boxes_path, out, progress=False)
    # one image changed in place: the first differing one is named
    copy = tmp_path / "copy"
    shutil.copytree(image_dir, copy)
    victim = sorted(boxes.images, key=lambda e: e.stem)[5]
    pixels = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    from medistill.data.phantoms import write_png

    write_png(copy / victim.file, pixels)
    with pytest.raises(MedistillError, match=rf"copy/{victim.file}.*{victim.stem}"):
        build_cache(GrabCutTeacher(), copy, boxes_path, out, progress=False)
    assert build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False)["done_before"] == 12


def test_lock_refuses_a_second_writer_and_takes_over_stale_locks(data, tmp_path, caplog):
    from medistill.teachers.cache import cache_lock, lock_path

    image_dir, boxes_path, _ = data
    out = tmp_path / "c.h5"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(out).write_text(f"{holder.pid} {__import__('socket').gethostname()}\n")
        with pytest.raises(MedistillError) as refused:
            build_cache(GrabCutTeacher(), image_dir, boxes_path, out, overwrite=True, progress=False)
        message = str(refused.value)
        assert f"PID {holder.pid}" in message and "--overwrite" not in message and str(lock_path(out)) in message
        assert not out.exists() and lock_path(out).exists()  # nothing written, the holder's lock kept
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and taken over, with a log line
    with caplog.at_level("WARNING", logger="medistill.teachers"):
        assert build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False)["written"] == 12
    assert any("stale lock" in r.message and str(holder.pid) in r.message for r in caplog.records)
    assert not lock_path(out).exists()  # released after the build
    # in one process: a second writer while the first holds the lock
    with cache_lock(out):
        assert lock_path(out).read_text().split()[0] == str(os.getpid())
        with pytest.raises(MedistillError, match=f"PID {os.getpid()}"):
            build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False)
    assert not lock_path(out).exists()


def test_overwrite_never_deletes_other_files(data, tmp_path):
    image_dir, boxes_path, _ = data
    text = tmp_path / "notes.h5"
    text.write_text("my notes")
    with pytest.raises(MedistillError, match="notes.h5.*cannot be opened"):
        build_cache(GrabCutTeacher(), image_dir, boxes_path, text, overwrite=True, progress=False)
    assert text.read_text() == "my notes"
    weights = tmp_path / "model.weights.h5"
    with h5py.File(weights, "w") as f:
        f.create_dataset("kernel", data=np.ones(3))
    for overwrite in (True, False):
        with pytest.raises(MedistillError, match="not a medistill teacher cache"):
            build_cache(GrabCutTeacher(), image_dir, boxes_path, weights, overwrite=overwrite, progress=False)
    with h5py.File(weights) as f:
        assert f["kernel"][()].tolist() == [1, 1, 1]


def test_nifti_slices_are_hashed_by_their_decoded_pixels(tmp_path):
    import nibabel as nib

    from medistill.boxes.boxes_file import Box, BoxesFile, ImageBoxes

    rng = np.random.default_rng(0)
    volume = rng.normal(100, 10, (32, 32, 3)).astype(np.float32)
    volume[8:20, 10:22] += 80
    (tmp_path / "img").mkdir()
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "img" / "vol.nii.gz")
    entries = [ImageBoxes("vol.nii.gz", f"vol_z{z}", 32, 32, [Box(6, 6, 24, 24)], z) for z in range(3)]
    write_boxes(tmp_path / "boxes.json", BoxesFile(["lesion"], entries, {"kind": "test"}))
    out = tmp_path / "c.h5"
    build_cache(GrabCutTeacher(), tmp_path / "img", tmp_path / "boxes.json", out, progress=False)
    from medistill.teachers.cache import CacheReader

    with CacheReader(out) as cache:
        assert [cache.entry(f"vol_z{z}").slice_index for z in range(3)] == [0, 1, 2]
        assert len({cache.entry(f"vol_z{z}").sha256 for z in range(3)}) == 3
    volume[:, :, 1] += 5.0  # slice 1 only
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "img" / "vol.nii.gz")
    with pytest.raises(MedistillError, match=r"vol\.nii\.gz \(stem 'vol_z1'\)"):
        build_cache(GrabCutTeacher(), tmp_path / "img", tmp_path / "boxes.json", out, progress=False)


def test_a_finished_cache_is_shared_read_only_by_several_runs(data, tmp_path):
    """Reusing a finished cache takes no write lock: two runs read it at the same time."""
    from medistill.teachers.cache import lock_path

    image_dir, boxes_path, boxes = data
    cache = tmp_path / "shared.h5"
    build_cache(GrabCutTeacher(), image_dir, boxes_path, cache, progress=False)
    with h5py.File(cache, "r"):  # another run reading it right now
        summary = build_cache(GrabCutTeacher(), image_dir, boxes_path, cache, progress=False)
    assert summary["written"] == 0 and summary["done_before"] == len(boxes.images)
    assert not lock_path(cache).exists()


def test_a_bad_entry_is_refused_before_anything_is_written(data, tmp_path):
    """An image whose size differs from its boxes entry stops the build before the cache exists."""
    import cv2

    image_dir, boxes_path, boxes = data
    last = boxes.images[-1]
    cv2.imwrite(str(image_dir / last.file), np.zeros((last.height + 3, last.width), np.uint8))
    with pytest.raises(MedistillError, match="nothing was written") as refused:
        build_cache(GrabCutTeacher(), image_dir, boxes_path, tmp_path / "c.h5", progress=False)
    assert last.file in str(refused.value)
    assert not (tmp_path / "c.h5").exists()
