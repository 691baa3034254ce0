"""Several mask files per image: a pattern finds them, one rule merges them, every mask reader uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medistill.data import load_sample, pair_folder, validate_samples, write_image_png, write_mask_png
from medistill.data.mask_layout import MaskPattern, class_names_of
from medistill.errors import DataError


def square(top: int, left: int, size: int, shape=(16, 16)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[top:top + size, left:left + size] = 255
    return mask


def sam_med2d_folder(root: Path) -> Path:
    """SAM-Med2D's layout: <stem>_<structure>_<k>.png; two cases with z-slices, structures overlap."""
    for stem in ("ct1_z000", "ct1_z001", "ct2_z000"):
        write_image_png(root / "images" / f"{stem}.png", np.full((16, 16), 50, np.uint8))
        write_mask_png(root / "masks" / f"{stem}_liver_0.png", square(0, 0, 8))
        write_mask_png(root / "masks" / f"{stem}_liver_1.png", square(12, 12, 3))   # a second instance
        write_mask_png(root / "masks" / f"{stem}_left_kidney_0.png", square(6, 6, 4))  # overlaps the liver
    write_mask_png(root / "masks" / "ct2_z000_spleen_0.png", square(10, 0, 3))  # only in one image
    return root


def class_folder(root: Path) -> Path:
    """One folder per class: masks/<class>/<stem>.png."""
    for stem in ("a", "b"):
        write_image_png(root / "images" / f"{stem}.png", np.full((16, 16), 50, np.uint8))
        write_mask_png(root / "masks" / "tumour" / f"{stem}.png", square(2, 2, 3))
        write_mask_png(root / "masks" / "organ" / f"{stem}.png", square(0, 0, 8))
    return root


def test_pattern_with_class_gives_one_label_map_numbered_alphabetically(tmp_path):
    root = sam_med2d_folder(tmp_path / "sam")
    samples = validate_samples(pair_folder(root / "images", root / "masks", mask_pattern="{stem}_{class}_*.png"))
    assert [s.stem for s in samples] == ["ct1_z000", "ct1_z001", "ct2_z000"]
    assert class_names_of([s.mask_parts for s in samples]) == ["left_kidney", "liver", "spleen"]
    mask = load_sample(samples[2])[1]
    expected = np.zeros((16, 16), np.int32)
    expected[6:10, 6:10] = 1        # left_kidney (label 1) ...
    expected[0:8, 0:8] = 2          # ... under the liver (label 2): the later class wins the overlap
    expected[12:15, 12:15] = 2      # liver, second file
    expected[10:13, 0:3] = 3        # spleen
    np.testing.assert_array_equal(mask, expected)
    assert load_sample(samples[0])[1].max() == 2  # the same numbering in an image without spleen


def test_pattern_without_class_is_the_union(tmp_path):
    root = sam_med2d_folder(tmp_path / "sam")
    samples = pair_folder(root / "images", root / "masks", mask_pattern="{stem}_*.png")
    mask = load_sample(samples[2])[1]
    assert set(np.unique(mask)) == {0, 1}
    assert mask.sum() == 8 * 8 + 9 + 9 + (16 - 4)  # liver ∪ kidney ∪ second liver ∪ spleen
    assert class_names_of([s.mask_parts for s in samples]) == []


def test_one_folder_per_class(tmp_path):
    root = class_folder(tmp_path / "classes")
    samples = pair_folder(root / "images", root / "masks", mask_pattern="{class}/{stem}.png")
    assert class_names_of([s.mask_parts for s in samples]) == ["organ", "tumour"]
    mask = load_sample(samples[0])[1]
    assert mask[3, 3] == 2 and mask[6, 6] == 1 and mask[12, 12] == 0  # the tumour inside the organ wins


def test_longest_image_stem_wins_and_strays_are_named(tmp_path):
    pattern = MaskPattern("{stem}_*.png")
    assert pattern.match("case1_z003_liver_0.png", {"case1", "case1_z003"}) == ("case1_z003", "")
    root = sam_med2d_folder(tmp_path / "sam")
    write_mask_png(root / "masks" / "nobody_liver_0.png", square(0, 0, 2))
    write_image_png(root / "images" / "lonely.png", np.full((16, 16), 5, np.uint8))
    with pytest.raises(DataError) as error:
        pair_folder(root / "images", root / "masks", mask_pattern="{stem}_{class}_*.png")
    text = str(error.value)
    assert "nobody_liver_0.png" in text and "matches no image" in text
    assert "lonely.png" in text and "no mask for this image" in text


@pytest.mark.parametrize("pattern, problem", [
    ("masks.png", "exactly once"), ("*{stem}.png", "must start"), ("../{stem}.png", "relative path"),
    ("{stem}_{class}_{class}.png", "once"), ("{stem}_{k}.png", "only {stem}"),
])
def test_bad_patterns_are_refused_with_an_example(tmp_path, pattern, problem):
    with pytest.raises(DataError, match=problem) as error:
        MaskPattern(pattern)
    assert "--mask-pattern" in str(error.value) and "Example" in str(error.value)


def test_a_pattern_that_matches_nothing_says_so(tmp_path):
    root = class_folder(tmp_path / "classes")
    with pytest.raises(DataError, match="matches the mask pattern"):
        pair_folder(root / "images", root / "masks", mask_pattern="{stem}_*.png")


def test_the_box_commands_read_both_layouts(tmp_path):
    import json

    import yaml

    from medistill.boxes import read_boxes
    from medistill.cli import main

    sam = sam_med2d_folder(tmp_path / "sam")
    assert main(["yolodata", "--image_dir", str(sam / "images"), "--mask_dir", str(sam / "masks"),
                 "--mask-pattern", "{stem}_{class}_*.png", "--out", str(tmp_path / "yolo")]) == 0
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "left_kidney", 1: "liver", 2: "spleen"}
    assert json.loads((tmp_path / "yolo" / "yolodata.json").read_text())["settings"]["mask_pattern"]
    folders = class_folder(tmp_path / "classes")
    out = tmp_path / "oracle.json"
    assert main(["detect", "boxes-from-masks", "--image_dir", str(folders / "images"), "--mask_dir",
                 str(folders / "masks"), "--mask-pattern", "{class}/{stem}.png", "--out", str(out)]) == 0
    boxes = read_boxes(out)
    assert boxes.class_names == ["organ", "tumour"]
    assert sorted(box.class_id for box in boxes.by_stem()["a"].boxes) == [0, 1]
    assert main(["detect", "boxes-from-masks", "--mask_dir", str(folders / "masks"), "--mask-pattern",
                 "{class}/{stem}.png", "--out", str(tmp_path / "never.json")]) == 2  # needs the images


def test_train_and_val_folders_share_one_class_numbering(tmp_path):
    """val/ without a class of train/ must not shift the labels; a class-folder masks/ is a split."""
    from medistill.data import find_splits
    from medistill.train.data_setup import training_samples

    for split, classes in (("train", ("cyst", "lesion")), ("val", ("lesion",))):
        for stem in ("a", "b"):
            write_image_png(tmp_path / split / "images" / f"{split}{stem}.png", np.full((16, 16), 50, np.uint8))
            for name in classes:
                write_mask_png(tmp_path / split / "masks" / name / f"{split}{stem}.png",
                               square(0, 0, 4) if name == "lesion" else square(8, 8, 4))
    assert set(find_splits(tmp_path)) == {"train", "val"}
    train, val = training_samples(tmp_path, mask_pattern="{class}/{stem}.png")
    assert load_sample(train[0])[1][0, 0] == 2 and load_sample(train[0])[1][8, 8] == 1
    assert load_sample(val[0])[1][0, 0] == 2  # 'lesion' is label 2 in val/ too, though val/ has no 'cyst'
