"""benchmarks/bench_label_free.py without training: rows, seeds, correlation, acceptance and tables.

The end-to-end smoke run (``--quick``) trains a dozen students and takes minutes, so it
is not part of the tests; these check the bookkeeping that turns run records into the
published figures.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The script and the modules beside it that it is made of, by name."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        names = ("bench_label_free", "common", "label_free_plan", "label_free_tables")
        yield types.SimpleNamespace(**{name: importlib.import_module(name) for name in names})
    finally:
        sys.path.remove(str(BENCHMARKS))


def _run(row: str, dice: float, score: float | None, kind: str = "meddistill", collapsed: bool = False) -> dict:
    return {"row": row, "kind": kind, "dice": dice, "hd95": 3.0, "per_image": {}, "train_seconds": 10.0,
            "best_val_dice": score, "collapsed": collapsed if kind != "supervised" else None}


def _results() -> dict:
    def block(default: list[float], teacher: float, boxes: float, supervised: float) -> dict:
        runs = {}
        for seed, dice in enumerate(default):
            runs[f"default_s{seed}"] = _run("default", dice, dice - 0.05)
            runs[f"released_s{seed}"] = _run("released", dice / 2, dice / 2 - 0.05, collapsed=seed == 0)
            runs[f"supervised_s{seed}"] = _run("supervised", supervised, 0.9, kind="supervised")
        return {"runs": runs, "failed": {}, "baselines": {"teacher": {"dice": teacher, "hd95": 2.0},
                                                         "boxes": {"dice": boxes, "hd95": 2.0}}}

    return {"sets": {"a": {"oracle": block([0.80, 0.82, 0.84], 0.78, 0.70, 0.90)},
                     "b": {"oracle": block([0.50, 0.30, 0.60], 0.55, 0.40, 0.95)}}}


def test_spearman_scipy_and_fallback_agree(bench, monkeypatch):
    common = bench.common
    x, y = [1, 2, 2, 4, 5], [2, 1, 3, 5, 4]
    rho, p, n = common.spearman(x, y)
    assert n == 5 and p is not None
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # ImportError: the rank fallback
    assert common.spearman(x, y)[0] == pytest.approx(rho, abs=1e-6)
    assert common.spearman([1, 2, float("nan"), 3], [1, 2, 3, None])[2] == 2
    assert math.isnan(common.spearman([1, 1, 1], [1, 2, 3])[0])  # one side constant


def test_ablation_rows_use_the_first_seeds(bench):
    rows, _ = bench.label_free_plan.trained_rows()
    keys = [row.key for row in rows]
    assert keys[:2] == ["released", "default"] and keys[-1] == "supervised"
    by_key = {row.key: row for row in rows}
    assert by_key["released"].overrides == bench.label_free_plan.RELEASED and by_key["default"].overrides == {}
    assert by_key["default"].seeds([0, 1, 2], 1) == [0, 1, 2]
    ablations = [row for row in rows if row.ablation]
    assert ablations and all(row.seeds([0, 1, 2], 1) == [0] for row in ablations)
    assert all(row.seeds([0, 1, 2], None) == [0, 1, 2] for row in rows)


def test_acceptance_and_correlation(bench):
    results = _results()
    acc = bench.label_free_tables.acceptance(results, [0, 1, 2])
    a, b = acc["per_set"]["a/oracle"], acc["per_set"]["b/oracle"]
    assert a["beats_teacher_and_boxes"] and a["no_seed_collapses"]
    assert a["fraction_of_supervised"] == pytest.approx(0.82 / 0.90)
    assert not b["beats_teacher_and_boxes"] and not b["no_seed_collapses"]  # 0.30 < 0.8 × 0.55
    assert acc["sets_at_85_percent_of_supervised"] == {"oracle": ["a"]}
    assert acc["two_sets_at_85_percent"] == {"oracle": False}
    corr = bench.label_free_tables.correlation(results)
    assert corr["all runs"]["n"] == 12  # the supervised runs are left out
    assert corr["a"]["rho"] == pytest.approx(1.0)


def test_tables_render(bench):
    results = _results()
    rows, _ = bench.label_free_plan.trained_rows()
    table = bench.label_free_tables.quality_table(results, rows, [0, 1, 2])
    assert "0.820 ± 0.020" in table and "1 of 3" in table and "(masks)" in table
    assert "**yes**" in bench.label_free_tables.acceptance_table(bench.label_free_tables.acceptance(results, [0, 1, 2]))
    assert "Spearman" in bench.label_free_tables.correlation_table(bench.label_free_tables.correlation(results))
    assert bench.label_free_tables.students_table({}) == "(not run)"


def test_boxes_filled_as_masks(bench):
    from medistill.boxes.boxes_file import Box, ImageBoxes

    mask = bench.common.fill_boxes(ImageBoxes("a.png", "a", 8, 6, [Box(1, 2, 4, 5)]))
    assert mask.shape == (6, 8) and mask.sum() == 9 and mask[2:5, 1:4].all()


def test_a_set_can_have_its_own_size_and_epochs(bench):
    plan = bench.label_free_plan.FULL
    phantoms, nuclei = plan.for_set("phantoms"), plan.for_set("nuclei")
    assert (phantoms.img_size, phantoms.epochs) == (128, 30) and phantoms.per_set == {}
    assert (nuclei.img_size, nuclei.epochs) == (plan.img_size, plan.epochs)
    same = plan.without_per_set("img_size")
    assert same.for_set("phantoms").img_size == plan.img_size and same.for_set("phantoms").epochs == 30
    assert "phantoms: 128 px, 30 epochs" in plan.sizes_text()
