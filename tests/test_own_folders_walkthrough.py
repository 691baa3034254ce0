"""The README's "Your own folders" steps, as written, on <case>_z### slices and on one mask per structure.

One set of images with two mask layouts: ``masks/<stem>.png``, and SAM-Med2D's
``structures/<stem>_<structure>_<k>.png``. The detector is trained once (on the first
layout); the second layout must give the very same YOLO labels, then the threshold and
the table run on it through ``--mask-pattern``. Steps 4-6 (teacher, student) are the
demo's and are tested elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medistill.data import write_image_png, write_mask_png

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def write_slices(root: Path, cases: range, slices: int = 6, size: int = 64) -> None:
    """Bright discs on noise, named <case>_z###; each disc is also saved as its own structure file."""
    rng = np.random.default_rng(cases.start)
    yy, xx = np.mgrid[:size, :size]
    for case in cases:
        for z in range(slices):
            stem = f"case{case:02d}_z{z:03d}"
            image = rng.normal(60, 12, (size, size))
            union = np.zeros((size, size), np.uint8)
            for k, structure in enumerate(("lesion", "cyst")[: 1 + (case + z) % 2]):
                radius = rng.uniform(6, 11)
                cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
                disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2) & (union == 0)
                image[disc] += 90
                union[disc] = 255
                write_mask_png(root / "structures" / f"{stem}_{structure}_{k}.png", disc.astype(np.uint8) * 255)
            write_image_png(root / "images" / f"{stem}.png", np.clip(image, 0, 255).astype(np.uint8))
            write_mask_png(root / "masks" / f"{stem}.png", union)


def run(*argv: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def labels_of(yolo: Path) -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted(yolo.glob("labels/*/*.txt"))}


def test_readme_steps_on_slices_and_on_one_mask_per_structure(tmp_path):
    write_slices(tmp_path / "my" / "labelled", range(10))
    write_slices(tmp_path / "my" / "test", range(10, 12))
    script = lambda name: str(ROOT / name)  # noqa: E731
    # 1. the YOLO set (the README's command) and the detector
    run(script("Creat_yolodata.py"), "--image_dir", "my/labelled/images", "--mask_dir", "my/labelled/masks",
        "--out", "runs/yolo", "--split", "0.8", "0.2", "0", "--class-names", "lesion", cwd=tmp_path)
    val = sorted(p.stem for p in (tmp_path / "runs/yolo/images/val").glob("*.png"))
    assert len(val) == 12 and len({stem.split("_z")[0] for stem in val}) == 2  # two whole cases
    run(script("detection.py"), "train", "--data", "runs/yolo/data.yaml", "--imgsz", "64", "--epochs", "20",
        "--out", "runs/detector", cwd=tmp_path)
    # the same set from one file per structure: identical labels
    run(script("Creat_yolodata.py"), "--image_dir", "my/labelled/images", "--mask_dir", "my/labelled/structures",
        "--mask-pattern", "{stem}_*.png", "--out", "runs/yolo_structures", "--split", "0.8", "0.2", "0",
        "--class-names", "lesion", cwd=tmp_path)
    assert labels_of(tmp_path / "runs/yolo_structures") == labels_of(tmp_path / "runs/yolo")
    for layout, extra in (("masks", []), ("structures", ["--mask-pattern", "{stem}_*.png"])):
        # 2. the threshold on the validation images
        run(script("detection.py"), "predict", "--weights", "runs/detector/weights/best.pt",
            "--image_dir", "runs/yolo/images/val", "--conf", "0.05", "--out", "runs/val_boxes.json", cwd=tmp_path)
        printed = run("-m", "medistill", "report", "conf", "--boxes", "runs/val_boxes.json",
                      "--mask_dir", f"my/labelled/{layout}",
                      "--image_dir", "my/labelled/images", *extra, "--out", "runs/conf.txt", cwd=tmp_path)
        assert "decided by 12 images with" in printed
        conf = (tmp_path / "runs/conf.txt").read_text().strip()
        # 3. boxes of the test images, then (6.) the table
        run(script("detection.py"), "predict", "--weights", "runs/detector/weights/best.pt",
            "--image_dir", "my/test/images", "--conf", conf, "--out", "runs/test_boxes.json", cwd=tmp_path)
        run("-m", "medistill", "report", "table", "--mask_dir", f"my/test/{layout}", "--image_dir", "my/test/images",
            *extra, "--boxes", "runs/test_boxes.json", "--out", "runs/table", cwd=tmp_path)
        table = pd.read_csv(tmp_path / "runs/table/pipeline_report.csv")
        recall = table["mean"][0]
        assert table["step"][0] == "detector boxes" and recall > 0.3, table
        latency = table.set_index("step").loc["detector: latency"]  # the detector of the boxes file, timed
        assert latency["metric"] == "latency ms/image" and latency["mean"] > 0
        images = pd.read_csv(tmp_path / "runs/table/pipeline_report_images.csv")
        assert sorted(images["image"]) == sorted(p.stem for p in (tmp_path / "my/test/images").glob("*.png"))
