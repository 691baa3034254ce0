"""What bench_label_free.py runs: the plan (full or quick), the trained rows and the students.

:func:`trained_rows` builds the rows from the code as it stands (a row whose part is not a
default, or whose module does not exist, is left out with a note).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

TEACHER = "litemedsam"
DEFAULT_DATASETS = ("phantoms", "nuclei", "colin27", "mni152")
ALL_DATASETS = (*DEFAULT_DATASETS, "cells3d")  # cells3d stands in for a default set whose files are missing


@dataclass(frozen=True)
class Plan:
    """Everything that differs between a full and a quick run."""

    img_size: int
    epochs: int
    batch: int
    distill: int            # distillation images per set (at most)
    test: int               # test images per set (at most)
    phantom_size: int
    nuclei_tile: int
    volume_gap: int         # Colin27 / MNI152: slices left out on each side of the test block
    latency_repeats: int    # passes over the test images in the latency loop
    student: str = "unet"
    student_options: dict = field(default_factory=lambda: {"base_filters": 16})
    val_fraction: float = 0.2
    per_set: dict = field(default_factory=dict)  # set name -> {"img_size": ..., "epochs": ...}

    def for_set(self, name: str) -> Plan:
        """The plan of one set: its own size and epochs where ``per_set`` gives them."""
        return replace(self, **self.per_set.get(name, {}), per_set={})

    def without_per_set(self, key: str) -> Plan:
        """The plan with ``key`` the same for every set (a command-line override)."""
        return replace(self, per_set={name: {k: v for k, v in values.items() if k != key}
                                      for name, values in self.per_set.items()})

    def sizes_text(self) -> str:
        """``64 px, 12 epochs`` plus each set that differs."""
        text = f"{self.img_size} px, {self.epochs} epochs"
        others = [f"{name}: {values.get('img_size', self.img_size)} px, {values.get('epochs', self.epochs)} epochs"
                  for name, values in self.per_set.items() if values]
        return text + (f" ({'; '.join(others)})" if others else "")


# The phantoms' lesions are a few pixels at 64 px: they are trained at their own 128 px (as in the demo),
# with the epochs a student needs to find small targets (it learns the background first).
FULL = Plan(img_size=64, epochs=12, batch=8, distill=48, test=16, phantom_size=128, nuclei_tile=64,
            volume_gap=5, latency_repeats=3, per_set={"phantoms": {"img_size": 128, "epochs": 30}})
QUICK = Plan(img_size=32, epochs=3, batch=8, distill=16, test=8, phantom_size=64, nuclei_tile=64,
             volume_gap=2, latency_repeats=1, val_fraction=0.25)


@dataclass(frozen=True)
class Row:
    """One trained row: a MedDistill variant (``overrides`` of ``MedDistillConfig``), rounds or supervised."""

    key: str
    label: str
    overrides: dict = field(default_factory=dict)
    kind: str = "meddistill"  # "meddistill", "rounds" or "supervised"
    ablation: bool = False    # limited to the first --ablation-seeds seeds

    def seeds(self, seeds: Sequence[int], ablation_seeds: int | None) -> list[int]:
        return list(seeds[:ablation_seeds]) if self.ablation and ablation_seeds else list(seeds)


RELEASED = {"weighting": "ulwr", "terms": ["bce", "prob", "feat"], "confidence": False, "negatives": "all",
            "quality_control": False, "schedule": "constant"}


def trained_rows() -> tuple[list[Row], list[str]]:
    """The trained rows in table order, and notes on rows that cannot run with this code."""
    from medistill.distill.meddistill.config import MedDistillConfig
    from medistill.distill.terms import DEFAULT_TERMS

    notes = []
    defaults = {f: getattr(MedDistillConfig("i", "b", "o"), f) for f in ("confidence", "negatives",
                                                                        "quality_control", "weighting", "schedule",
                                                                        "weight_average", "tight_boxes")}
    rows = [Row("released", "released student (ulwr; bce, prob, feat; no confidence; negatives all; no QC; constant lr)",
                dict(RELEASED)),
            Row("default", f"**new default** ({defaults['weighting']}; {', '.join(DEFAULT_TERMS)})")]
    for term in ("dice", "proj", "outside"):
        if term in DEFAULT_TERMS:
            rows.append(Row(f"no_{term}", f"default without {term}",
                            {"terms": [t for t in DEFAULT_TERMS if t != term]}, ablation=True))
        else:
            notes.append(f"'no {term}' not run: {term} is not a default term ({', '.join(DEFAULT_TERMS)})")
    if defaults["confidence"]:
        rows.append(Row("no_confidence", "default without confidence weights", {"confidence": False}, ablation=True))
    else:
        notes.append("'no confidence' not run: confidence weights are off by default")
    if defaults["negatives"] != "all":
        rows.append(Row("negatives_all", "default with negatives \"all\"", {"negatives": "all"}, ablation=True))
    else:
        notes.append("'negatives all' not run: it is the default")
    if defaults["quality_control"]:
        rows.append(Row("no_qc", "default without quality control", {"quality_control": False}, ablation=True))
    else:
        notes.append("'no quality control' not run: quality control is off by default")
    if defaults["tight_boxes"]:
        rows.append(Row("no_tight_boxes", "default with the detector's boxes in the projection term "
                        "(`tight_boxes=False`)", {"tight_boxes": False}, ablation=True))
    else:
        rows.append(Row("tight_boxes", "default with boxes tightened to the teacher's masks in the projection term "
                        "(`tight_boxes=True`)", {"tight_boxes": True}, ablation=True))
    other = "cosine" if defaults["schedule"] == "constant" else "constant"
    rows.append(Row(f"schedule_{other}", f"default with the {other} learning rate (`schedule={other}`)",
                    {"schedule": other}, ablation=True))
    if not defaults["weight_average"]:
        rows.append(Row("weight_average", "default with the weight average (`weight_average=0.99`)",
                        {"weight_average": 0.99}, ablation=True))
    else:
        rows.append(Row("no_weight_average", "default without the weight average (`weight_average=0`)",
                        {"weight_average": 0.0}, ablation=True))
    rows.append(Row("co_learn", "default with `co_learn=True` (LiteMedSAM's decoder fine-tuned with the student)",
                    {"co_learn": True}, ablation=True))
    try:
        from medistill.distill.meddistill.rounds import run_rounds  # noqa: F401
        rows.append(Row("rounds2", "default with `rounds=2` (refinement rounds)", {"rounds": 2}, "rounds", ablation=True))
        rows.append(Row("rounds2_co_learn", "default with `rounds=2` and `co_learn=True`",
                        {"rounds": 2, "co_learn": True}, "rounds", ablation=True))
    except ImportError:
        notes.append("`rounds=2` not run: medistill.distill.meddistill.rounds.run_rounds does not exist")
    rows.append(Row("supervised", "supervised bound (masks of the distillation images)", kind="supervised"))
    return rows, notes


STUDENTS = (("unet16", "unet", {"base_filters": 16}), ("unet32", "unet", {"base_filters": 32}),
            ("lcovnet", "lcovnet", {}), ("unetpp", "unetpp", {}))
