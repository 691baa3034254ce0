"""bench_label_free.py's data: WORK/<set>/{distill,test}/{images,masks} and the boxes files.

Each ``prepare_*`` writes one set's distillation and test folders and returns a line that
says what it did; :func:`prepare_dataset` adds the ground-truth boxes and is reused with
``--resume``; :func:`detector_boxes` copies the boxes of ``--detector-boxes``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from common import copy_pairs, evenly, exported_stems, middle_block, slice_index, tile_row, tile_rows
from json_records import read_json, write_json
from label_free_plan import Plan


def _export(name: str, out: Path, **options) -> Path:
    from medistill.data.sources import export_source

    return export_source(name, out, overwrite=True, **options)


def prepare_phantoms(root: Path, plan: Plan) -> str:
    from medistill.data.phantoms import generate_phantoms

    for folder, n, seed in (("distill", plan.distill, 0), ("test", plan.test, 1)):
        generate_phantoms(root / folder, n, size=plan.phantom_size, seed=seed, overwrite=True)
    return (f"synthetic head phantoms of {plan.phantom_size} px, 0–3 small lesions each (about one in five "
            f"has none): distillation {plan.distill} (seed 0), test {plan.test} (seed 1); lesion masks")


def prepare_nuclei(root: Path, plan: Plan) -> str:
    export = _export("nuclei", root / "export", tile=plan.nuclei_tile)
    stems = exported_stems(export)
    rows = tile_rows(stems)
    per_row = max(1, len(stems) // len(rows))
    test_rows = max(1, math.ceil(plan.test / per_row))
    test = [s for s in stems if tile_row(s) in rows[-test_rows:]][:plan.test]
    distill = evenly([s for s in stems if tile_row(s) in rows[:-test_rows]], plan.distill)
    copy_pairs(export, distill, root / "distill")
    copy_pairs(export, test, root / "test")
    return (f"stardist DSB-2018 nuclei image cut into {len(stems)} tiles of {plan.nuclei_tile} px; test "
            f"{len(test)} tiles of the bottom {test_rows} row(s), distillation {len(distill)} of the rows above")


def _volume_split(root: Path, export: Path, plan: Plan, gap: int | None = None) -> tuple[list[str], list[str]]:
    test, outside = middle_block(exported_stems(export), plan.test, plan.volume_gap if gap is None else gap)
    distill = evenly(outside, plan.distill)
    copy_pairs(export, distill, root / "distill")
    copy_pairs(export, test, root / "test")
    return distill, test


def prepare_cells3d(root: Path, plan: Plan) -> str:
    distill, test = _volume_split(root, _export("cells3d", root / "export"), plan, gap=2)
    return (f"scikit-image cells3d nuclei channel (256×256 z-slices), nuclei masks; test {len(test)} contiguous "
            f"slices z{slice_index(test[0])}–z{slice_index(test[-1])}, distillation {len(distill)} spread over "
            "the others (none within 2 of the test block)")


def prepare_colin27(root: Path, plan: Plan) -> str:
    distill, test = _volume_split(root, _export("colin27", root / "export"), plan)
    return (f"Colin27 T1 axial slices (181×217, skull on), ch2bet brain mask; test {len(test)} contiguous "
            f"slices z{slice_index(test[0])}–z{slice_index(test[-1])}, distillation {len(distill)} slices "
            f"spread over the others (none within {plan.volume_gap} of the test block)")


MNI152_TARGETS = {"white": (2,), "grey": (1,), "brain": (1, 2)}


def prepare_mni152(root: Path, plan: Plan, target: str = "white") -> str:
    import cv2
    import numpy as np

    export = _export("mni152", root / "export_labels")
    binary = root / "export"
    for sub in ("images", "masks"):
        if (binary / sub).exists():
            shutil.rmtree(binary / sub)
        (binary / sub).mkdir(parents=True)
    labels = MNI152_TARGETS[target]
    kept = 0
    for image in sorted((export / "images").glob("*.png")):
        mask = cv2.imread(str(export / "masks" / image.name), cv2.IMREAD_UNCHANGED)
        fg = np.isin(mask, labels)
        if fg.sum() < 20:  # slices without the target
            continue
        shutil.copy2(image, binary / "images" / image.name)
        cv2.imwrite(str(binary / "masks" / image.name), np.where(fg, 255, 0).astype(np.uint8))
        kept += 1
    distill, test = _volume_split(root, binary, plan)
    return (f"MNI152 2009 T1 template (197×233, skull-stripped), {target}-matter mask"
            f"{'' if target != 'brain' else ' (grey or white)'} from nilearn's tissue maps; {kept} axial slices "
            f"with it; test {len(test)} contiguous slices z{slice_index(test[0])}–z{slice_index(test[-1])}, "
            f"distillation {len(distill)} spread over the others (none within {plan.volume_gap} of the test block)")


MIN_AREA = {"phantoms": 1, "nuclei": 4, "colin27": 50, "mni152": 20, "cells3d": 4}


def prepare_dataset(name: str, root: Path, plan: Plan, args: argparse.Namespace) -> dict:
    """Images, masks and ground-truth boxes of one set (reused with ``--resume``)."""
    record_path = root / "prepared.json"
    settings = {k: getattr(plan, k) for k in ("distill", "test", "phantom_size", "nuclei_tile", "volume_gap")}
    settings.update(mni152_target=args.mni152_target, min_area=MIN_AREA[name])
    record = read_json(record_path)
    if args.resume and record.get("settings") == json.loads(json.dumps(settings)):
        return record
    for sub in ("distill", "test", "boxes", "caches", "runs", "detector"):
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    builders = {"phantoms": prepare_phantoms, "nuclei": prepare_nuclei, "colin27": prepare_colin27,
                "cells3d": prepare_cells3d,
                "mni152": lambda r, p: prepare_mni152(r, p, args.mni152_target)}
    description = builders[name](root, plan)
    from medistill.boxes.boxes_file import write_boxes
    from medistill.boxes.oracle import boxes_from_masks

    for split in ("distill", "test"):
        boxes = boxes_from_masks(root / split / "masks", root / split / "images", min_area=MIN_AREA[name])
        write_boxes(root / "boxes" / f"{split}_oracle.json", boxes)
    record = {"settings": settings, "description": description,
              "counts": {split: len(exported_stems(root / split)) for split in ("distill", "test")}}
    write_json(record_path, record)
    return record


def detector_boxes(name: str, root: Path, source: Path) -> None:
    """Copy the detector boxes of ``--detector-boxes`` into ``root/boxes``: a folder with
    ``distill.json`` and ``test.json``, or one boxes file whose entries cover both splits."""
    from medistill.boxes.boxes_file import BoxesFile, read_boxes, write_boxes

    for split in ("distill", "test"):
        stems = set(exported_stems(root / split))
        path = source / f"{split}.json" if source.is_dir() else source
        boxes = read_boxes(path)
        entries = [entry for entry in boxes.images if entry.stem in stems]
        missing = stems - {entry.stem for entry in entries}
        if missing:
            raise SystemExit(f"--detector-boxes {name}={source}: no entry for {len(missing)} {split} image(s) "
                             f"of {root / split / 'images'}, e.g. {sorted(missing)[0]}")
        write_boxes(root / "boxes" / f"{split}_detector.json",
                    BoxesFile(boxes.class_names, entries, {**boxes.source, "copied_from": str(path)}))
