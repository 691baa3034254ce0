"""Creat_yolodata: label files, data.yaml, splits, NIfTI volumes, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medistill.boxes.yolo_dataset import (
    SPLITS,
    assign_splits,
    sample_group,
    split_counts,
    to_uint8,
)
from medistill.cli import main
from medistill.data import Sample, read_image
from medistill.errors import MedistillError

REPO = Path(__file__).resolve().parents[2]


def labels(root: Path, split: str, stem: str) -> list[str]:
    return (root / "labels" / split / f"{stem}.txt").read_text().splitlines()


def split_of(root: Path, stem: str) -> str:
    return next(s for s in SPLITS if (root / "images" / s / f"{stem}.png").is_file())


def test_boxes_labels_and_data_yaml(two_blob_set: Path, tmp_path: Path, capsys):
    out = tmp_path / "yolo"
    assert main(["yolodata", "--image_dir", str(two_blob_set / "images"),
                 "--mask_dir", str(two_blob_set / "masks"), "--out", str(out)]) == 0
    # two blobs: columns 3..7 / rows 2..5 and columns 9..11 / rows 7..8 of a 12x10 image
    assert labels(out, split_of(out, "two"), "two") == [
        "0 0.458333 0.400000 0.416667 0.400000", "0 0.875000 0.800000 0.250000 0.200000"]
    assert labels(out, split_of(out, "empty"), "empty") == []  # a negative image
    assert labels(out, split_of(out, "diagonal"), "diagonal") == ["0 0.208333 0.250000 0.250000 0.300000"]
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "foreground"} and data["nc"] == 1
    assert "path" not in data  # folders are relative to data.yaml, so the set can move
    for split in ("train", "val", "test"):
        assert data[split] == f"images/{split}"
    assert sum(len(list((out / "images" / s).glob("*.png"))) for s in SPLITS) == 3
    written = read_image(out / "images" / split_of(out, "two") / "two.png")
    assert written.shape == (10, 12, 1) and np.all(written == 100)  # 8-bit copied unchanged
    printed = capsys.readouterr().out
    assert "no box" in printed and "box side" in printed
    record = json.loads((out / "yolodata.json").read_text())
    assert sorted(sum(record["splits"].values(), [])) == ["diagonal", "empty", "two"]
    assert record["summary"]["boxes"] and record["settings"]["seed"] == 0


def test_one_box_and_min_area(two_blob_set: Path, tmp_path: Path):
    out = tmp_path / "one"
    main(["yolodata", "--data", str(two_blob_set), "--out", str(out), "--one-box"])
    assert labels(out, split_of(out, "two"), "two") == ["0 0.625000 0.550000 0.750000 0.700000"]
    out = tmp_path / "min"
    main(["yolodata", "--data", str(two_blob_set), "--out", str(out), "--min-area", "7"])
    assert labels(out, split_of(out, "two"), "two") == ["0 0.458333 0.400000 0.416667 0.400000"]
    assert labels(out, split_of(out, "diagonal"), "diagonal") == []  # 3 pixels < 7


def test_label_map_gives_classes_and_names(tmp_path: Path, pair_writer):
    root = tmp_path / "labels"
    mask = np.zeros((8, 8), np.uint8)
    mask[0:2, 0:2] = 1
    mask[4:8, 4:8] = 3
    pair_writer(root, "a", np.full((8, 8), 9), mask)
    pair_writer(root, "b", np.full((8, 8), 9), (mask == 1).astype(np.uint8) * 2)
    out = tmp_path / "yolo"
    main(["yolodata", "--data", str(root), "--out", str(out), "--split", "1", "0", "0"])
    assert labels(out, "train", "a") == ["0 0.125000 0.125000 0.250000 0.250000",
                                         "2 0.750000 0.750000 0.500000 0.500000"]
    assert labels(out, "train", "b") == ["1 0.125000 0.125000 0.250000 0.250000"]
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "label_1", 1: "label_2", 2: "label_3"}
    assert data["val"] == "images/train"  # no val split: ultralytics still gets one
    out2 = tmp_path / "named"
    main(["yolodata", "--data", str(root), "--out", str(out2), "--split", "1", "0", "0",
          "--class-names", "liver", "kidney", "spleen"])
    assert yaml.safe_load((out2 / "data.yaml").read_text())["names"][2] == "spleen"
    with pytest.raises(MedistillError, match="label values up to 3"):
        from medistill.boxes.yolo_dataset import YoloDataConfig, build_yolo_dataset
        build_yolo_dataset(YoloDataConfig(out=str(tmp_path / "few"), data=str(root),
                                          split=(1, 0, 0), class_names=["liver"]))


def test_split_counts_and_determinism(tmp_path: Path):
    assert split_counts(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    assert split_counts(2, (0.8, 0.1, 0.1)) == (1, 1, 0)
    assert split_counts(1, (0.5, 0.25, 0.25)) == (1, 0, 0)
    assert split_counts(100, (0.6, 0.2, 0.2)) == (60, 20, 20)
    samples = [Sample(f"img_{i:03d}", Path(f"img_{i:03d}.png")) for i in range(40)]
    first = assign_splits(samples, (0.7, 0.15, 0.15), seed=3)
    again = assign_splits(list(reversed(samples)), (0.7, 0.15, 0.15), seed=3)
    other = assign_splits(samples, (0.7, 0.15, 0.15), seed=4)
    assert first == again
    assert first != other
    assert [len(first[s]) for s in SPLITS] == [28, 6, 6]
    assert sorted(s.stem for split in first.values() for s in split) == [s.stem for s in samples]


def test_slices_of_one_volume_never_share_two_splits(tmp_path: Path):
    # 2-D slices exported from volumes: <name>_z<index>; 12 volumes of 5 slices each
    samples = [Sample(f"case{v:02d}_z{z:03d}", Path(f"case{v:02d}_z{z:03d}.png"))
               for v in range(12) for z in range(5)]
    samples += [Sample(f"vol{v}_z{z:03d}", Path(f"vol{v}.nii.gz"), None, z) for v in range(3)
                for z in range(4)]
    for seed in range(5):
        splits = assign_splits(samples, (0.6, 0.2, 0.2), seed=seed)
        owner: dict[str, str] = {}
        for split, members in splits.items():
            for sample in members:
                group = sample_group(sample)
                assert owner.setdefault(group, split) == split
        assert len(owner) == 15 and all(splits[s] for s in SPLITS)
    assert sample_group(samples[0]) == "case00"
    assert sample_group(samples[0], group_pattern="") == "case00_z000"


def save_nifti(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def test_nifti_volumes_through_the_data_layer(tmp_path: Path):
    root = tmp_path / "volumes"
    for v in range(4):
        image = np.linspace(0, 3000, 16 * 12 * 3, dtype=np.float32).reshape(16, 12, 3) + v
        mask = np.zeros((16, 12, 3), np.uint8)
        mask[2:6, 3:9, 1] = 1  # a block in slice 1 only
        save_nifti(root / "images" / f"vol{v}.nii.gz", image)
        save_nifti(root / "masks" / f"vol{v}.nii.gz", mask)
    out = tmp_path / "yolo"
    assert main(["yolodata", "--data", str(root), "--out", str(out), "--split", "0.5", "0.25", "0.25"]) == 0
    record = json.loads((out / "yolodata.json").read_text())
    volumes = {split: {stem.split("_z")[0] for stem in stems}
               for split, stems in record["splits"].items()}
    assert [len(volumes[s]) for s in SPLITS] == [2, 1, 1]
    assert set.union(*volumes.values()) == {f"vol{v}" for v in range(4)}
    assert all(len(stems) == 3 * len(volumes[split]) for split, stems in record["splits"].items())
    split = split_of(out, "vol0_z001")
    assert len(labels(out, split, "vol0_z001")) == 1 and labels(out, split, "vol0_z000") == []
    written = read_image(out / "images" / split / "vol0_z001.png")
    assert written.min() == 0 and written.max() == 255  # float slices min-max stretched to 8 bits
    main(["yolodata", "--data", str(root), "--out", str(tmp_path / "drop"), "--drop-empty-slices"])
    kept = json.loads((tmp_path / "drop" / "yolodata.json").read_text())["splits"]
    assert sorted(sum(kept.values(), [])) == [f"vol{v}_z001" for v in range(4)]


def test_to_uint8():
    assert to_uint8(np.array([[0, 7, 255]], np.float32)).tolist() == [[0, 7, 255]]
    sixteen = np.array([[0, 1000, 65535]], np.float32)
    assert to_uint8(sixteen).tolist() == [[0, 4, 255]]
    assert to_uint8(np.full((2, 2), 5000.0)).tolist() == [[0, 0], [0, 0]]
    assert to_uint8(np.array([[0.2, 0.7]])).tolist() == [[0, 255]]


def test_refuses_non_empty_output_without_overwrite(two_blob_set: Path, tmp_path: Path, capsys):
    out = tmp_path / "yolo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["yolodata", "--data", str(two_blob_set), "--out", str(out)]
    assert main(args) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(args + ["--overwrite", "--seed", "5"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # only its own files are replaced
    assert sum(len(list((out / "images" / s).glob("*.png"))) for s in SPLITS) == 3
    assert main(["yolodata", "--data", str(two_blob_set), "--out", str(two_blob_set), "--overwrite"]) == 2
    assert "holds the input folder" in capsys.readouterr().err


def test_bad_input_names_the_files(two_blob_set: Path, tmp_path: Path, capsys):
    (two_blob_set / "images" / "broken.png").write_bytes(b"not a png")
    (two_blob_set / "masks" / "broken.png").write_bytes(b"not a png either")
    (two_blob_set / "images" / "lonely.png").write_bytes((two_blob_set / "images" / "two.png").read_bytes())
    args = ["yolodata", "--data", str(two_blob_set), "--out", str(tmp_path / "yolo")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "lonely.png" in err and "no mask for this image" in err
    assert not (tmp_path / "yolo").exists()  # checked before anything is written
    assert main(args + ["--skip-bad"]) == 0
    assert main(["yolodata", "--image_dir", str(two_blob_set / "images"), "--out", str(tmp_path / "x")]) == 2
    assert "needs --mask_dir" in capsys.readouterr().err
    assert main(["yolodata", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["yolodata", "--data", str(two_blob_set), "--out", str(tmp_path / "z"),
                 "--split", "0.5", "0.5", "0.5"]) == 2
    assert "sum to 1" in capsys.readouterr().err


def test_named_splits_are_kept(tmp_path: Path, blob_writer):
    root = tmp_path / "edsdf"
    blob_writer(root / "train", 4, size=32, seed=1)
    blob_writer(root / "val", 2, size=32, seed=2)
    out = tmp_path / "yolo"
    main(["yolodata", "--data", str(root), "--out", str(out)])
    assert len(list((out / "images" / "train").glob("*.png"))) == 4
    assert len(list((out / "images" / "val").glob("*.png"))) == 2
    assert "test" not in yaml.safe_load((out / "data.yaml").read_text())


def test_top_level_script(two_blob_set: Path, tmp_path: Path):
    done = subprocess.run([sys.executable, str(REPO / "Creat_yolodata.py"), "--image_dir",
                           str(two_blob_set / "images"), "--mask_dir", str(two_blob_set / "masks"),
                           "--out", str(tmp_path / "yolo"), "--seed", "1"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "images" in done.stdout and (tmp_path / "yolo" / "data.yaml").is_file()
    again = subprocess.run([sys.executable, str(REPO / "Creat_yolodata.py"), "--data",
                            str(two_blob_set), "--out", str(tmp_path / "yolo")],
                           capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr


def test_an_empty_val_split_names_group_pattern(tmp_path: Path, pair_writer, caplog):
    """Slices of one case, <case>_z###: one group, so val stays empty; the warning names the fix."""
    import logging

    logging.getLogger("medistill").addHandler(caplog.handler)  # main() turns propagation off
    root = tmp_path / "slices"
    for z in range(6):
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:5] = 255
        pair_writer(root, f"brain_z{z:03d}", np.full((8, 8), 40 + z), mask)
    argv = ["yolodata", "--data", str(root), "--split", "0.8", "0.2", "0"]
    try:
        assert main(argv + ["--out", str(tmp_path / "grouped")]) == 0
    finally:
        logging.getLogger("medistill").removeHandler(caplog.handler)
    assert "val split is empty" in caplog.text and "1 group(s) (brain)" in caplog.text
    assert "--group-pattern ''" in caplog.text
    assert not list((tmp_path / "grouped" / "images" / "val").glob("*.png"))
    assert main(argv + ["--group-pattern", "", "--out", str(tmp_path / "single")]) == 0
    assert len(list((tmp_path / "single" / "images" / "val").glob("*.png"))) == 1
