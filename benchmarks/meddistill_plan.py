"""What bench_meddistill.py runs: the students, MedDistill variants, data-set sizes, full and quick plans."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from student_spec import Student

TEACHER = "litemedsam"


@dataclass(frozen=True)
class Variant:
    """One MedDistill run: which boxes, which weighting rule, co-learning or not."""

    boxes: str  # "detector" or "oracle"
    weighting: str = "ulwr"
    co_learn: bool = False

    @property
    def name(self) -> str:
        return f"{self.boxes}_{self.weighting}" + ("_colearn" if self.co_learn else "")

    @property
    def label(self) -> str:
        return f"MedDistill `{self.weighting}`" + (" + `--co-learn`" if self.co_learn else "")

    def arguments(self, plan: Plan) -> list[str]:
        options = ["--weighting", self.weighting]
        if self.weighting == "fixed":
            options += ["--fixed-weights", json.dumps(plan.fixed_weights)]
        if self.co_learn:
            options += ["--co-learn", "--refresh-every", str(plan.refresh_every)]
        return options


@dataclass(frozen=True)
class DataSettings:
    """Sizes and detector training of one data set."""

    detector_imgsz: int
    detector_epochs: int
    min_area: int
    variants: tuple[Variant, ...]
    counts: dict = field(default_factory=dict)  # data-set specific sizes, see the builders
    oracle_test_teacher: bool = False  # also run the teacher on the test images with oracle boxes


@dataclass(frozen=True)
class Plan:
    """Everything that differs between a full and a quick run."""

    student: Student
    img_size: int
    epochs: int
    batch: int
    lr: float
    val_fraction: float
    refresh_every: int
    fixed_weights: dict
    data: dict[str, DataSettings]
    live_images: int  # the cache-vs-live comparison: phantoms, epochs
    live_epochs: int
    latency_images: int

    def training_arguments(self) -> list[str]:
        """Options shared by ``meddistill.py`` and ``medistill train`` (same student, size, epochs)."""
        return [*self.student.arguments(), "--img-size", str(self.img_size), "--epochs", str(self.epochs),
                "--batch", str(self.batch), "--lr", str(self.lr), "--val-fraction", str(self.val_fraction),
                "--seed", "0"]


ALL_VARIANTS = (Variant("detector", "ulwr"), Variant("detector", "learned"), Variant("detector", "fixed"),
                Variant("detector", "ulwr", co_learn=True), Variant("oracle", "ulwr"))
FULL = Plan(
    student=Student("unet", {"base_filters": 16}), img_size=64, epochs=30, batch=4, lr=1e-3,
    val_fraction=0.2, refresh_every=10, fixed_weights={"bce": 1.0, "prob": 1.0, "feat": 0.5},
    data={
        "phantoms": DataSettings(128, 25, 1, ALL_VARIANTS,
                                 {"detector": 100, "detector_val": 20, "distill": 32, "test": 16, "size": 128},
                                 oracle_test_teacher=True),
        "nuclei": DataSettings(64, 60, 4, (Variant("detector"), Variant("oracle")), {"tile": 64}),
        "colin27": DataSettings(128, 40, 50, (Variant("detector"),),
                                {"distill": 24, "test": 12, "gap": 5, "detector": 70}),
    },
    live_images=4, live_epochs=3, latency_images=4,
)
QUICK = Plan(
    student=Student("unet", {"base_filters": 4, "depth": 2}), img_size=64, epochs=1, batch=4, lr=1e-3,
    val_fraction=0.25, refresh_every=1, fixed_weights={"bce": 1.0, "prob": 1.0, "feat": 0.5},
    data={
        "phantoms": DataSettings(64, 1, 1, ALL_VARIANTS,
                                 {"detector": 12, "detector_val": 4, "distill": 8, "test": 4, "size": 64},
                                 oracle_test_teacher=True),
        "nuclei": DataSettings(64, 1, 4, (Variant("detector"), Variant("oracle")), {"tile": 128}),
        "colin27": DataSettings(64, 1, 50, (Variant("detector"),),
                                {"distill": 8, "test": 4, "gap": 2, "detector": 8}),
    },
    live_images=4, live_epochs=2, latency_images=2,
)
DEFAULT_DATASETS = ("phantoms", "nuclei", "colin27")
