"""bench_recipes.py's settings (full and quick plans, methods, variants) and its two data sets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import CommandLog, copy_pairs, exported_stems, middle_block, slice_index, tile_row, tile_rows
from student_spec import Student as Network

SECTION_KEY = "recipes"
SECTION_TITLE = "Distillation recipes against the undistilled student (`medistill distill` + `predict_eval.py`)"
BASELINE = "baseline"
TEACHER = "teacher"
SIKD_TEACHER = "sikd teacher"
RECIPES = ("kamsd", "cakd-mskd", "sikd", "sscd")
# Variants, run after every recipe at its defaults: name -> (recipe, --recipe-options)
VARIANTS = {"sikd-noclip": ("sikd", {"clip_norm": 0.0}), "sscd-exchange": ("sscd", {"patch_exchange": True}),
            "kamsd-1scale": ("kamsd", {"scales": 1}), "kamsd-noadapter": ("kamsd", {"adapter_weight": 0.0}),
            "kamsd-noboundary": ("kamsd", {"boundary": False}), "sikd-fw0.5": ("sikd", {"feature_weight": 0.5}),
            "sikd-dice": ("sikd", {"dice": True}), "sscd-nocurriculum": ("sscd", {"curriculum": False}),
            "sscd-curriculum": ("sscd", {"curriculum": True}),
            "kamsd-main": ("kamsd", {"scales": 1, "boundary": False}),
            "cakd-mskd-main": ("cakd-mskd", {"scale_weights": [1.0]})}
METHODS = (BASELINE, *RECIPES, *VARIANTS)
CURVES_PNG = Path(__file__).resolve().parent / "recipes_curves.png"


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSettings:
    """Training options of one data set (students; the teacher gets ``teacher_epochs``)."""

    img_size: int
    epochs: int
    teacher_epochs: int
    batch: int
    val_fraction: float

    def arguments(self, epochs: int) -> list[str]:
        """As command-line arguments, with ``epochs`` epochs and no early stop (``--patience`` = epochs:
        every run of a comparison trains the same number of epochs; the best epoch is still exported)."""
        return ["--img-size", str(self.img_size), "--epochs", str(epochs), "--batch", str(self.batch),
                "--val-fraction", str(self.val_fraction), "--patience", str(epochs)]


@dataclass(frozen=True)
class Plan:
    """Everything that differs between a full and a quick run."""

    settings: dict[str, DataSettings]
    student: Network
    teacher: Network
    seeds: tuple[int, ...]
    labelled_fraction: float  # SSCD
    phantom_counts: tuple[int, int, int]  # train, test, size in px
    mni152_test_slices: int
    mni152_gap: int
    mni152_train_step: int
    latency_repeats: int
    variant_seeds: tuple[tuple[str, int], ...] = ()  # (variant or "*", N): its first N seeds only

    def seeds_of(self, method: str) -> tuple[int, ...]:
        """The seeds ``method`` runs with: every seed, or the first N that ``variant_seeds`` gives a variant
        (by its name, else by ``"*"``)."""
        if method not in VARIANTS:
            return self.seeds
        limits = dict(self.variant_seeds)
        count = limits.get(method, limits.get("*"))
        return self.seeds[:count] if count else self.seeds


FULL = Plan(  # phantoms: 40 epochs, since at 20 the 8-filter baseline had not begun to find the lesions (val Dice 0.04)
    settings={"phantoms": DataSettings(img_size=64, epochs=40, teacher_epochs=40, batch=8, val_fraction=0.2),
              "mni152": DataSettings(img_size=64, epochs=20, teacher_epochs=25, batch=8, val_fraction=0.2),
              "nuclei": DataSettings(img_size=64, epochs=20, teacher_epochs=25, batch=8, val_fraction=0.2)},
    student=Network("unet", {"base_filters": 8}),
    teacher=Network("unet", {"base_filters": 16, "deep_supervision": True}),
    seeds=(0, 1, 2), labelled_fraction=1.0,
    phantom_counts=(60, 30, 64),
    mni152_test_slices=20, mni152_gap=5, mni152_train_step=2,
    latency_repeats=50,
)
QUICK = Plan(
    settings={"phantoms": DataSettings(img_size=64, epochs=1, teacher_epochs=1, batch=4, val_fraction=0.25),
              "mni152": DataSettings(img_size=64, epochs=1, teacher_epochs=1, batch=4, val_fraction=0.25),
              "nuclei": DataSettings(img_size=64, epochs=1, teacher_epochs=1, batch=4, val_fraction=0.25)},
    student=Network("unet", {"base_filters": 4, "depth": 2}),
    teacher=Network("unet", {"base_filters": 4, "depth": 2, "deep_supervision": True}),
    seeds=(0,), labelled_fraction=1.0,
    phantom_counts=(12, 4, 64),
    mni152_test_slices=4, mni152_gap=4, mni152_train_step=10,
    latency_repeats=5,
)
DEFAULT_DATASETS = ("mni152", "phantoms")


# ---------------------------------------------------------------------------
# Data sets: each builder writes ROOT/train/{images,masks} and ROOT/test/{images,masks}
# ---------------------------------------------------------------------------


def prepare_phantoms(root: Path, plan: Plan, commands: CommandLog) -> str:
    """Binary phantoms, every one with lesions: train with seed 0, test with seed 1."""
    n_train, n_test, size = plan.phantom_counts
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        commands.run(["-m", "medistill", "phantoms", "--out", str(root / split), "--n", str(n),
                      "--size", str(size), "--seed", str(seed), "--lesion-probability", "1.0",
                      "--overwrite"], root / f"phantoms_{split}.log")
    return (f"{n_train} train phantoms (seed 0) / {n_test} test phantoms (seed 1), {size} px, "
            "binary lesion masks, every phantom with lesions (`--lesion-probability 1.0`, so that "
            "Dice measures outlines, not the luck of empty predictions on negatives)")


def prepare_mni152(root: Path, plan: Plan, commands: CommandLog) -> str:
    """MNI152 grey/white-matter label map: a contiguous block of axial slices is the test set."""
    export = root.parent / "mni152_labels_export"
    commands.run(["-m", "medistill", "sources", "--name", "mni152", "--out", str(export), "--overwrite"],
                 root.parent / "mni152_labels_export.log")
    test, outside = middle_block(exported_stems(export), plan.mni152_test_slices, plan.mni152_gap)
    train = outside[::plan.mni152_train_step]
    copy_pairs(export, train, root / "train")
    copy_pairs(export, test, root / "test")
    return (f"ICBM152 2009 T1 axial slices (233×197 px) with the exported label map 0 background / "
            f"1 grey matter / 2 white matter (`medistill sources --name mni152`, no `--binary`); "
            f"test = {len(test)} contiguous slices z{slice_index(test[0])}–z{slice_index(test[-1])}, the "
            f"slices within {plan.mni152_gap} of that block unused, train = one in "
            f"{plan.mni152_train_step} of the remaining slices ({len(train)} slices). Dice is "
            "`predict_eval.py`'s mean foreground Dice (grey and white matter averaged per image)")


def prepare_nuclei(root: Path, plan: Plan, commands: CommandLog) -> str:
    """Binary nuclei: stardist's image in 64-px tiles; the bottom two rows of tiles are the test set."""
    export = root.parent / "nuclei_export"
    commands.run(["-m", "medistill", "sources", "--name", "nuclei", "--tile", "64", "--out", str(export),
                  "--overwrite"], root.parent / "nuclei_export.log")
    stems = exported_stems(export)
    bottom = tile_rows(stems)[-2:]
    test = [stem for stem in stems if tile_row(stem) in bottom]
    copy_pairs(export, [stem for stem in stems if stem not in test], root / "train")
    copy_pairs(export, test, root / "test")
    return (f"stardist DSB-2018 nuclei image (512 px) in {len(stems)} tiles of 64 px, binary nuclei masks; "
            f"test = the bottom two rows of tiles ({len(test)}), train = the {len(stems) - len(test)} above")


DATASET_BUILDERS: dict[str, Callable[[Path, Plan, CommandLog], str]] = {
    "phantoms": prepare_phantoms,
    "mni152": prepare_mni152,
    "nuclei": prepare_nuclei,
}
