"""Sharded teacher caches: --shard I/N, --merge, the reader over shards, --workers K, the pipeline.

GrabCut keeps these fast; the pipeline's order and error handling are checked directly.
"""

from __future__ import annotations

import json
import threading

import h5py
import numpy as np
import pytest

from medistill.errors import MedistillError
from medistill.teachers.cache import CacheReader, build_cache
from medistill.teachers.cache_merge import merge_shards
from medistill.teachers.grabcut import GrabCutTeacher
from medistill.teachers.pipeline import run_pipeline
from medistill.teachers.shards import parse_shard, shard_path, shard_paths


@pytest.fixture()
def data(phantom_set):
    return phantom_set(n=7, size=48, seed=3)


def _teach(image_dir, boxes_path, out, *extra):
    from medistill.cli import main

    return main(["teach", "--image_dir", str(image_dir), "--boxes", str(boxes_path), "--teacher", "grabcut",
                 "--out", str(out), "--no-progress", "--jitter-draws", "1", *extra])


def _fused(cache) -> dict[str, np.ndarray]:
    with CacheReader(cache) as reader:
        return {stem: reader.entry(stem).fused for stem in reader.stems}


def test_shards_merge_into_the_cache_one_process_makes(data, tmp_path, capsys):
    image_dir, boxes_path, boxes = data
    out = tmp_path / "c.h5"
    assert _teach(image_dir, boxes_path, tmp_path / "whole.h5") == 0
    for index in range(3):
        assert _teach(image_dir, boxes_path, out, "--shard", f"{index}/3") == 0
    assert not out.exists()
    parts = shard_paths(out, 3)
    with CacheReader(parts) as shards, h5py.File(parts[1]) as one:  # the reader takes the list of shards
        assert shards.stems == sorted(e.stem for e in boxes.images)
        assert sorted(one["images"]) == sorted(e.stem for e in boxes.images[1::3])
        assert one.attrs["shard"] == "1/3"
    capsys.readouterr()
    assert _teach(image_dir, boxes_path, out, "--merge") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == len(boxes.images)
    whole, merged = _fused(tmp_path / "whole.h5"), _fused(out)
    assert sorted(whole) == sorted(merged)
    for stem in whole:
        np.testing.assert_array_equal(whole[stem], merged[stem])
    with h5py.File(out) as f:
        with_boxes = next(e.stem for e in boxes.images if e.boxes)
        assert f.attrs["shard"] == "" and f["images"][with_boxes]["masks"].compression == "gzip"
    again = build_cache(GrabCutTeacher(), image_dir, boxes_path, out, progress=False,
                        quality=_quality())  # the merged file is a finished cache of the whole set
    assert again["written"] == 0 and again["done_before"] == len(boxes.images)


def _quality():
    from medistill.teachers.quality import QualitySettings

    return QualitySettings(draws=1)


def test_merge_refuses_incomplete_or_mixed_shards(data, tmp_path):
    image_dir, boxes_path, boxes = data
    out = tmp_path / "c.h5"
    assert _teach(image_dir, boxes_path, out, "--shard", "0/2") == 0
    assert _teach(image_dir, boxes_path, out, "--merge") == 2  # shard 1/2 does not exist
    assert _teach(image_dir, boxes_path, out, "--shard", "1/2", "--jitter", "0.1") == 0
    assert _teach(image_dir, boxes_path, out, "--merge") == 2  # other quality settings: not one cache
    with pytest.raises(MedistillError, match="not shards of one cache"):
        CacheReader(shard_paths(out, 2))
    with pytest.raises(MedistillError, match="two of the shards"):
        CacheReader([shard_path(out, parse_shard("0/2"))] * 2)
    assert not out.exists()
    assert _teach(image_dir, boxes_path, out, "--shard", "1/2", "--overwrite") == 0
    second = shard_path(out, parse_shard("1/2"))
    with h5py.File(second, "a") as f:  # one image of shard 1 unfinished (a killed run)
        f["images"][boxes.images[3].stem].attrs["done"] = False
    with pytest.raises(MedistillError, match=rf"{second.name}: 1 of its 3 image\(s\) are not finished"):
        merge_shards(out, 2, boxes_path)
    assert not out.exists()
    with h5py.File(second, "a") as f:
        f["images"][boxes.images[3].stem].attrs["done"] = True
    out.write_bytes(b"not a cache")  # what --merge did not write stays, --overwrite or not
    assert _teach(image_dir, boxes_path, out, "--merge") == 2
    assert _teach(image_dir, boxes_path, out, "--merge", "--overwrite") == 2
    assert out.read_bytes() == b"not a cache"
    out.unlink()
    assert _teach(image_dir, boxes_path, out, "--merge") == 0
    assert _fused(out).keys() == {e.stem for e in boxes.images}
    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(MedistillError, match="--shard"):
            parse_shard(bad)


def test_a_shard_resumes_and_keeps_its_lock(data, tmp_path):
    from medistill.teachers.cache_lock import cache_lock

    image_dir, boxes_path, boxes = data
    shard = parse_shard("0/2")
    path = shard_path(tmp_path / "c.h5", shard)
    first = build_cache(GrabCutTeacher(), image_dir, boxes_path, path, progress=False, shard=shard)
    assert first["images"] == len(boxes.images[0::2]) == first["written"]
    with h5py.File(path, "a") as f:  # as if killed while writing the last image
        f["images"][boxes.images[2].stem].attrs["done"] = False
    with cache_lock(path), pytest.raises(MedistillError, match="being written by another process"):
        build_cache(GrabCutTeacher(), image_dir, boxes_path, path, progress=False, shard=shard)
    seen = []
    again = build_cache(GrabCutTeacher(), image_dir, boxes_path, path, progress=False, shard=shard,
                        on_progress=lambda done, total: seen.append((done, total)))
    assert again["written"] == 1 and again["done_before"] == first["images"] - 1
    assert seen == [(first["images"] - 1, first["images"]), (first["images"], first["images"])]


def test_workers_build_and_merge(data, tmp_path, capsys):
    image_dir, boxes_path, boxes = data
    out = tmp_path / "w.h5"
    assert _teach(image_dir, boxes_path, out, "--workers", "2") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["workers"] == 2 and summary["written"] == len(boxes.images)
    assert all(p.is_file() for p in shard_paths(out, 2))
    assert sorted(_fused(out)) == sorted(e.stem for e in boxes.images)
    assert _teach(image_dir, boxes_path, out, "--workers", "2") == 0  # done: reused as one cache
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == 0


def test_pipeline_keeps_order_overlaps_and_stops_on_errors():
    threads, written = set(), []

    def read(i):
        threads.add(threading.current_thread().name)
        return i

    def compute(batch):
        assert len(batch) <= 3
        return [x * 10 for x in batch]

    def write(value):
        threads.add(threading.current_thread().name)
        written.append(value)

    assert run_pipeline(range(8), read, compute, write, batch=3) == 8
    assert written == [x * 10 for x in range(8)] and {"teach-reader", "teach-writer"} <= threads

    def bad_read(i):
        if i == 5:
            raise MedistillError("image 5 is broken")
        return i

    written.clear()
    with pytest.raises(MedistillError, match="image 5"):
        run_pipeline(range(8), bad_read, compute, write, batch=2)
    assert written == [0, 10, 20, 30, 40]  # everything before the bad image was written

    def bad_compute(batch):
        if 6 in batch:
            raise MedistillError("the model failed on image 6")
        return compute(batch)

    written.clear()
    with pytest.raises(MedistillError, match="image 6"):
        run_pipeline(range(8), read, bad_compute, write, batch=2)
    assert written == [0, 10, 20, 30, 40, 50]  # the batches computed before the failure were written

    def bad_write(value):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_pipeline(range(50), read, compute, bad_write, batch=2)
