"""bench_label_free.py's detector boxes (``--train-detector SET``): a YOLO detector trained
from scratch on labelled images that are never the images it boxes, run through the
project's own commands (``Creat_yolodata.py``, ``detection.py``, ``medistill report conf``).

- **phantoms**: a separate labelled set (100 phantoms, generator seed 5: neither the
  distillation seed 0 nor the test seed 1), as in ``make demo``.
- **the other sets** have no images to spare: the distillation images are split in two
  halves, a detector trained on one half's masks boxes the other half (cross-fitting), and
  a detector trained on all of them boxes the test images.

Each detector's confidence threshold is the one with the best box F1 on its own validation
images: 20 % of its labelled images, drawn image by image (the slices of Colin27 and MNI152
come from one volume, so ``Creat_yolodata.py``'s default grouping by volume would put them
all in one split). A detector that finds nothing there keeps the lowest candidate
threshold; its boxes then show it in the boxes-as-masks row. Every step leaves its output
in ``WORK/SET/detector/`` and is skipped when that output exists, so a killed run resumes.
The boxes land in ``WORK/SET/detector/boxes/{distill,test}.json``, the folder
``--detector-boxes`` takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common import copy_pairs, exported_stems

ROOT = Path(__file__).resolve().parents[1]
# (detector input size, epochs) per set; sizes are multiples of 32 (YOLO's largest stride)
# (the volume sets' halves are 24 slices: 30 epochs, ~90 steps, found nothing on Colin27)
DETECTOR_SETTINGS = {"phantoms": (128, 40), "nuclei": (64, 60), "colin27": (128, 100), "mni152": (128, 100),
                     "cells3d": (128, 100)}
PHANTOM_LABELLED = (100, 5)  # how many, generator seed


def _run(arguments: list[str], log: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(arguments) + "\n")
        handle.flush()
        done = subprocess.run(arguments, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(arguments[:3])} ... failed (exit {done.returncode}); see {log}")


def _detector(labelled: Path, out: Path, name: str, seed: int, log: Path) -> tuple[Path, float]:
    """Train a detector on ``labelled`` (images/ + masks/); its weights and chosen threshold.

    Each step is skipped once its output is complete (the YOLO set's ``yolodata.json`` and the
    run's record are written last); a killed training resumes from its ``last.pt``."""
    from label_free_data import MIN_AREA
    from medistill.boxes.detector import RUN_RECORD

    imgsz, epochs = DETECTOR_SETTINGS[name]
    py = sys.executable
    yolo, run, conf_file = out / "yolo", out / "run", out / "conf.txt"
    weights = run / "weights" / "best.pt"
    if not (yolo / "yolodata.json").is_file():
        _run([py, "Creat_yolodata.py", "--image_dir", str(labelled / "images"), "--mask_dir", str(labelled / "masks"),
              "--out", str(yolo), "--split", "0.8", "0.2", "0", "--seed", str(seed), "--class-names", "target",
              "--min-area", str(MIN_AREA[name]), "--group-pattern", "^(.+)$", "--overwrite"], log)
    if not (run / RUN_RECORD).is_file():
        _run([py, "detection.py", "train", "--data", str(yolo / "data.yaml"), "--model", "yolo11n.yaml",
              "--imgsz", str(imgsz), "--epochs", str(epochs), "--batch", "8", "--seed", str(seed),
              "--out", str(run)], log)
    val_boxes = _predict(weights, 0.05, yolo / "images" / "val", out / "val_boxes.json", log)
    if not conf_file.is_file():
        _run([py, "-m", "medistill", "report", "conf", "--boxes", str(val_boxes), "--mask_dir",
              str(labelled / "masks"), "--min-area", str(MIN_AREA[name]), "--accept-weak-detector",
              "--out", str(conf_file)], log)
    return weights, float(conf_file.read_text().strip())


def _predict(weights: Path, conf: float, images: Path, out: Path, log: Path) -> Path:
    if not out.is_file():  # detection.py writes the boxes file atomically
        _run([sys.executable, "detection.py", "predict", "--weights", str(weights), "--image_dir", str(images),
              "--conf", str(conf), "--out", str(out)], log)
    return out


def _labelled_copy(source: Path, stems: list[str], target: Path) -> None:
    """Copy image/mask pairs unless a complete copy is there (masks are copied after images)."""
    if len(list((target / "masks").glob("*.png"))) != len(stems):
        copy_pairs(source, stems, target)


def _merge(parts: list[Path], out: Path) -> None:
    from medistill.boxes.boxes_file import BoxesFile, read_boxes, write_boxes

    files = [read_boxes(p) for p in parts]
    entries = sorted((e for f in files for e in f.images), key=lambda e: e.stem)
    write_boxes(out, BoxesFile(files[0].class_names, entries, {"kind": "detector", "cross_fitted": [str(p) for p in parts]}))


def train_detector_boxes(name: str, root: Path, phantom_size: int, seed: int = 0) -> Path:
    """Detector boxes of one prepared set (``root`` = ``WORK/SET``); the folder holding them."""
    folder = root / "detector"
    boxes = folder / "boxes"
    if (boxes / "distill.json").is_file() and (boxes / "test.json").is_file():
        return boxes
    boxes.mkdir(parents=True, exist_ok=True)
    log = folder / "detector.log"
    if name == "phantoms":
        from medistill.data.phantoms import generate_phantoms

        labelled = folder / "labelled"
        n, phantom_seed = PHANTOM_LABELLED
        if len(list((labelled / "masks").glob("*.png"))) != n:
            generate_phantoms(labelled, n, size=phantom_size, seed=phantom_seed, overwrite=True)
        weights, conf = _detector(labelled, folder / "all", name, seed, log)
        _predict(weights, conf, root / "distill" / "images", boxes / "distill.json", log)
    else:
        stems = exported_stems(root / "distill")
        halves = [stems[0::2], stems[1::2]]
        parts = []
        for k, (train, other) in enumerate([(halves[0], halves[1]), (halves[1], halves[0])]):
            fold = folder / f"fold{k}"
            _labelled_copy(root / "distill", train, fold / "labelled")
            _labelled_copy(root / "distill", other, fold / "unseen")
            weights, conf = _detector(fold / "labelled", fold, name, seed, log)
            parts.append(_predict(weights, conf, fold / "unseen" / "images", fold / "unseen_boxes.json", log))
        _merge(parts, boxes / "distill.json")
        weights, conf = _detector(root / "distill", folder / "all", name, seed, log)
    _predict(weights, conf, root / "test" / "images", boxes / "test.json", log)
    return boxes


# What the section notes say of these boxes.
DESCRIPTION = (f"YOLO11n from scratch, trained by `label_free_detector.py` on labelled images it never boxes: "
               f"for phantoms {PHANTOM_LABELLED[0]} other phantoms (generator seed {PHANTOM_LABELLED[1]}); for the "
               "other sets the distillation images in two halves, each half boxed by the detector trained on the "
               "other half's masks, the test images by one trained on all of them. Threshold: best box F1 on each "
               "detector's validation fifth")
