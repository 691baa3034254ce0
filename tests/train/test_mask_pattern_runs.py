"""--mask-pattern in `medistill train`, `medistill evaluate` and `medistill distill`: one folder per class.

A tiny set (6 images of 32 px, two structures each saved in its own class folder) is
trained for 2 epochs with `--mask-pattern '{class}/{stem}.png'`; the model learns 3
classes (background, cyst, lesion), evaluate reads the same layout, the saved
config.json resumes the run and reruns it identically, and another pattern is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medistill.data import write_image_png, write_mask_png

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PATTERN = "{class}/{stem}.png"
TRAIN_ARGS = ["--student", "unet", "--student-options", '{"base_filters": 4, "depth": 2}', "--img-size", "32",
              "--batch", "2", "--epochs", "2", "--min-steps-per-epoch", "1", "--no-augment", "--seed", "0"]


def medistill(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "medistill", *args], capture_output=True, text=True, cwd=ROOT)
    if check and done.returncode != 0:
        raise AssertionError(f"medistill {' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return done


def write_class_folders(root: Path, count: int, seed: int, size: int = 32) -> None:
    """images/<stem>.png and masks/<class>/<stem>.png: a bright 'lesion' square and a dim 'cyst' square."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        stem = f"img{index:02d}"
        image = rng.normal(40, 5, (size, size))
        lesion = np.zeros((size, size), np.uint8)
        cyst = np.zeros((size, size), np.uint8)
        top, left = rng.integers(1, 8, 2)
        lesion[top:top + 9, left:left + 9] = 255
        cyst[top + 14:top + 22, left + 12:left + 20] = 255
        image[lesion > 0] += 150
        image[cyst > 0] += 70
        write_image_png(root / "images" / f"{stem}.png", np.clip(image, 0, 255).astype(np.uint8))
        write_mask_png(root / "masks" / "lesion" / f"{stem}.png", lesion)
        write_mask_png(root / "masks" / "cyst" / f"{stem}.png", cyst)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classes")
    write_class_folders(root / "train", 6, seed=0)
    write_class_folders(root / "test", 3, seed=1)
    return {"train": root / "train", "test": root / "test", "runs": root / "runs"}


@pytest.fixture(scope="module")
def trained(folders) -> Path:
    run = folders["runs"] / "unet"
    medistill("train", "--data", str(folders["train"]), "--out", str(run), "--mask-pattern", PATTERN, *TRAIN_ARGS)
    return run


def test_train_reads_one_folder_per_class_as_a_label_map(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["mask_pattern"] == PATTERN
    card = json.loads((trained / "preprocessing.json").read_text())
    assert card["num_classes"] == 3  # background, cyst (1), lesion (2): the class folders, not one union
    history = pd.read_csv(trained / "history.csv")
    assert len(history) == 2 and np.isfinite(history["loss"]).all()


def test_evaluate_reads_the_pattern_and_scores_every_class(trained, folders):
    out = folders["runs"] / "eval"
    medistill("evaluate", "--image_dir", str(folders["test"] / "images"), "--mask_dir", str(folders["test"] / "masks"),
              "--mask-pattern", PATTERN, "--model_path", str(trained), "--out", str(out / "metrics.csv"))
    metrics = pd.read_csv(out / "metrics.csv")
    assert sorted(metrics["image"]) == ["img00", "img01", "img02"]
    assert {"dice_c1", "dice_c2"} <= set(metrics.columns), metrics.columns
    assert json.loads((out / "eval_config.json").read_text())["mask_pattern"] == PATTERN
    # without the pattern the class folders are not masks of these images
    failed = medistill("evaluate", "--image_dir", str(folders["test"] / "images"),
                       "--mask_dir", str(folders["test"] / "masks"), "--model_path", str(trained),
                       "--out", str(folders["runs"] / "eval_plain" / "metrics.csv"), check=False)
    assert failed.returncode == 2 and "mask" in failed.stderr


def test_saved_config_resumes_and_reruns_identically_and_another_pattern_is_refused(trained, folders):
    from medistill.train import TrainConfig, train_supervised

    again = medistill("train", "--data", str(folders["train"]), "--out", str(trained), "--mask-pattern", PATTERN,
                      *TRAIN_ARGS)
    assert "resum" in (again.stdout + again.stderr).lower()
    assert len(pd.read_csv(trained / "history.csv")) == 2  # nothing retrained: the run was complete
    config = TrainConfig.load(trained / "config.json")
    assert config.mask_pattern == PATTERN
    rerun = train_supervised(replace(config, out=str(folders["runs"] / "rerun")))
    first, second = pd.read_csv(trained / "history.csv"), pd.read_csv(rerun / "history.csv")
    np.testing.assert_allclose(second["loss"], first["loss"], rtol=1e-5)
    np.testing.assert_allclose(second["val_dice"], first["val_dice"], rtol=1e-5)
    other = medistill("train", "--data", str(folders["train"]), "--out", str(trained),
                      "--mask-pattern", "{class}/{stem}.*", *TRAIN_ARGS, check=False)
    assert other.returncode == 2 and "mask_pattern" in other.stderr, other.stderr


def test_distill_takes_the_pattern_and_bad_patterns_are_refused_before_reading(tmp_path):
    import argparse

    from medistill.cli import distill as distill_cli
    from medistill.errors import MedistillError
    from medistill.train import TrainConfig

    parser = argparse.ArgumentParser()
    distill_cli.add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", str(tmp_path / "o"), "--recipe", "kamsd",
                              "--teacher-model", "t.keras", "--mask-pattern", PATTERN])
    assert distill_cli.config_from_args(args).mask_pattern == PATTERN
    with pytest.raises(MedistillError, match="--mask-pattern"):
        TrainConfig(data="d", out="o", mask_pattern="masks_without_stem.png")
    with pytest.raises(MedistillError, match="not both"):
        TrainConfig(data="d", out="o", mask_pattern=PATTERN, mask_suffix="_mask")
    assert TrainConfig(data="d", out="o", mask_pattern=PATTERN).differences(TrainConfig(data="d", out="o")) == [
        "mask_pattern"]
