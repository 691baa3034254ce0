"""Quality control of the teacher's pseudo-labels: the rule, the CSV, the contact sheet, phantoms."""

from __future__ import annotations

import csv
import doctest

import numpy as np
import pytest

from medistill.distill.meddistill import quality_control as qc
from medistill.errors import MedistillError
from medistill.teachers.quality import MaskQuality


def good(stability=0.97, score=0.85, fill=0.7, components=1, area=80) -> MaskQuality:
    return MaskQuality(score, stability, fill, components, area)


def test_doctests():
    assert doctest.testmod(qc).failed == 0


def test_absolute_rule_on_a_small_set():
    """Fewer masks than min_masks_for_relative: only the absolute thresholds."""
    records = {"a": [good(), good(stability=0.3)],            # unstable: dropped
               "b": [good(stability=0.65)],                   # half-way between 0.5 and 0.8
               "c": [good(area=0, fill=0.0, components=0)],   # empty: dropped
               "d": [good(fill=0.995), good(components=2)],   # box-shaped; two fragments
               "e": []}                                       # no boxes
    decisions = qc.decide(records)
    by = {(d.stem, d.index): d for d in decisions.masks}
    assert by[("a", 0)].action == "keep" and by[("a", 0)].weight == 1.0 and by[("a", 0)].reason == "ok"
    assert by[("a", 1)].action == "drop" and "unstable" in by[("a", 1)].reason
    assert by[("b", 0)].action == "down-weight" and by[("b", 0)].weight == pytest.approx(0.5)
    assert by[("c", 0)].action == "drop" and "empty" in by[("c", 0)].reason
    assert by[("d", 0)].action == "drop" and "box-shaped" in by[("d", 0)].reason
    assert by[("d", 1)].weight == pytest.approx(0.5) and "2 fragments" in by[("d", 1)].reason
    images = decisions.image_weights()
    assert images == {"a": 0.0, "b": pytest.approx(0.5), "c": 0.0, "d": 0.0, "e": 1.0}
    assert decisions.thresholds["stability"]["relative"] == 0.0
    assert decisions.counts() == {"keep": 1, "down-weight": 2, "drop": 3}
    assert decisions.mask_weights()["a"].tolist() == [1.0, 0.0] and decisions.mask_weights()["e"].size == 0


def test_relative_thresholds_catch_outliers_of_a_good_set():
    rng = np.random.default_rng(0)
    records = {f"s{i}": [good(stability=float(rng.uniform(0.95, 1.0)), score=float(rng.uniform(0.85, 0.9)))]
               for i in range(30)}
    records["odd"] = [good(stability=0.84)]   # above the absolute keep 0.8, far below the set
    records["no_score"] = [good(score=float("nan"))]
    decisions = qc.decide(records)
    t = decisions.thresholds["stability"]
    assert t["relative"] == 1.0 and t["keep"] > 0.85 > 0.8 > t["drop"] > 0.5
    odd = next(d for d in decisions.masks if d.stem == "odd")
    assert odd.action in ("down-weight", "drop") and "unstable" in odd.reason
    assert next(d for d in decisions.masks if d.stem == "no_score").action == "keep"  # NaN score ignored
    # the same mask alone with the absolute thresholds only would be kept
    assert qc.decide({"odd": [good(stability=0.84)]}).masks[0].action == "keep"
    with pytest.raises(MedistillError, match="ordered"):
        qc.QualityRule(stability_drop=0.9, stability_keep=0.8)


@pytest.fixture(scope="module")
def phantom_cache(tmp_path_factory):
    from medistill.boxes.boxes_file import write_boxes
    from medistill.boxes.oracle import boxes_from_masks
    from medistill.data.phantoms import generate_phantoms
    from medistill.teachers.cache import build_cache
    from medistill.teachers.grabcut import GrabCutTeacher

    root = tmp_path_factory.mktemp("qc")
    generate_phantoms(root / "ph", n=16, size=64, seed=3)
    write_boxes(root / "boxes.json", boxes_from_masks(root / "ph" / "masks", root / "ph" / "images", jitter=0.1))
    build_cache(GrabCutTeacher(), root / "ph" / "images", root / "boxes.json", root / "c.h5", progress=False)
    return root


def test_csv_and_contact_sheet(phantom_cache, tmp_path):
    decisions = qc.decide_cache(phantom_cache / "c.h5")
    path = qc.write_decisions_csv(tmp_path / "out" / "decisions.csv", decisions)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(decisions.masks) + len(decisions.images) == len(decisions.masks) + 16
    masks = [r for r in rows if r["level"] == "mask"]
    assert {r["action"] for r in masks} <= {"keep", "down-weight", "drop"}
    for row, decision in zip(masks, decisions.masks):
        assert (row["stem"], int(row["box"])) == (decision.stem, decision.index)
        assert float(row["weight"]) == pytest.approx(decision.weight, abs=1e-4) and row["reason"] == decision.reason
        assert int(row["area"]) == decision.quality.area and row["score"] == ""  # grabcut has no score
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["decisions.csv"]  # no temporary left
    sheet = qc.contact_sheet(tmp_path / "sheet.png", decisions, phantom_cache / "c.h5",
                             image_dir=phantom_cache / "ph" / "images", count=6, columns=3)
    from PIL import Image

    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.size[0] > 300
    qc.contact_sheet(tmp_path / "no_images.png", decisions, phantom_cache / "c.h5", count=2)
    assert (tmp_path / "no_images.png").stat().st_size > 0


def test_dropped_masks_are_worse_on_phantoms(phantom_cache):
    """Ground truth only to check the rule: what it drops has lower true Dice than what it keeps."""
    from medistill.data.io import read_mask
    from medistill.teachers.cache import CacheReader
    from medistill.teachers.quality import box_pixels

    decisions = qc.decide_cache(phantom_cache / "c.h5")
    dice = {"keep": [], "drop": []}
    with CacheReader(phantom_cache / "c.h5") as cache:
        for d in decisions.masks:
            if d.action not in dice:
                continue
            truth = read_mask(phantom_cache / "ph" / "masks" / f"{d.stem}.png") > 0
            rows, cols = box_pixels(cache.entry(d.stem, features=False).boxes[d.index], *truth.shape)
            inside = np.zeros_like(truth)
            inside[rows, cols] = truth[rows, cols]
            pred = cache.masks(d.stem, d.index) > 0.5
            dice[d.action].append(2 * (pred & inside).sum() / max(pred.sum() + inside.sum(), 1))
    assert dice["keep"] and dice["drop"]
    assert np.mean(dice["drop"]) < np.mean(dice["keep"]) - 0.2


def test_cli_teach_writes_the_quality_report(phantom_cache, tmp_path, capsys):
    import json

    from medistill.cli import main

    args = ["teach", "--image_dir", str(phantom_cache / "ph" / "images"), "--boxes", str(phantom_cache / "boxes.json"),
            "--teacher", "grabcut", "--out", str(tmp_path / "c.h5"), "--jitter", "0.1", "--jitter-draws", "2",
            "--quality-report", str(tmp_path / "q"), "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["quality_report"]
    assert summary["keep"] + summary["down-weight"] + summary["drop"] == summary["masks"] > 0
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        "quality_contact_sheet.png", "quality_decisions.csv", "quality_summary.json"]
    from medistill.teachers.cache import CacheReader

    with CacheReader(tmp_path / "c.h5") as cache:
        assert (cache.quality_settings.jitter, cache.quality_settings.draws) == (0.1, 2)
