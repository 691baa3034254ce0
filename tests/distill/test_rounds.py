"""Refinement rounds: the wiring from round k's student to round k+1's prompts, targets and start.

The tests replace the trainer by a fake that writes a run folder (a one-layer model
whose weight is its round number) and the student's predictions by known maps, so
that what each round must produce is known exactly; test_rounds_end_to_end.py runs the
real trainer on 64 px phantoms.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import h5py
import keras
import numpy as np
import pytest

from medistill.boxes.boxes_file import Box, BoxesFile, ImageBoxes, read_boxes, write_boxes
from medistill.data.preprocess import PreprocessConfig
from medistill.distill.meddistill import rounds
from medistill.distill.meddistill import trainer as trainer_module
from medistill.distill.meddistill.config import MedDistillConfig
from medistill.distill.meddistill.trainer import train_meddistill as real_train_meddistill
from medistill.errors import MedistillError
from medistill.export import ModelCard
from medistill.fileio import file_sha256, write_json_atomic
from medistill.teachers.base import Teacher, TeacherOutput, mask_uncertainty
from medistill.teachers.registry import register_teacher

WIDTH, HEIGHT = 64, 48
TINY = {"base_filters": 4, "depth": 2}
# The objects of the synthetic images (pixel-edge xyxy) and the detector's boxes.
OBJECTS = {"img0": (10, 10, 20, 20), "img1": (30, 5, 40, 15), "img2": (12, 20, 22, 30),
           "img4": (5, 30, 15, 40), "img5": (40, 25, 50, 35)}
DETECTOR = {"img0": (6, 6, 24, 24), "img1": (27, 2, 43, 18), "img4": (3, 28, 17, 42),
            "img5": (20, 10, 60, 46)}          # img2: missed; img3, img6: nothing there
SPURIOUS = {"img3": (50, 30, 58, 38)}          # a student false positive the teacher rejects
STEMS = [f"img{i}" for i in range(7)]


class RoundsBoxTeacher(Teacher):
    """0.8 inside each box; nothing for a box starting at x >= 48 (it 'sees nothing there')."""

    name = "rounds-box"

    def _predict(self, image, boxes):
        masks = np.zeros((len(boxes), *image.shape[:2]), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
            if x1 < 48:
                masks[i, y1:y2, x1:x2] = 0.8
        return TeacherOutput(masks, mask_uncertainty(masks), None, None, None, boxes)


register_teacher("rounds-box", lambda argument: RoundsBoxTeacher())


@pytest.fixture
def squares(tmp_path) -> dict:
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for stem in STEMS:
        image = np.full((HEIGHT, WIDTH), 30, np.uint8)
        if stem in OBJECTS:
            x1, y1, x2, y2 = OBJECTS[stem]
            image[y1:y2, x1:x2] = 200
        cv2.imwrite(str(images / f"{stem}.png"), image)
        boxes = [Box(*DETECTOR[stem], score=0.6)] if stem in DETECTOR else []
        entries.append(ImageBoxes(f"{stem}.png", stem, WIDTH, HEIGHT, boxes))
    write_boxes(tmp_path / "boxes.json", BoxesFile(["lesion"], entries, {"kind": "detector"}))
    return {"root": tmp_path, "images": images, "boxes": tmp_path / "boxes.json"}


def make_config(squares, out: Path, **overrides) -> MedDistillConfig:
    settings = dict(image_dir=str(squares["images"]), boxes=str(squares["boxes"]), out=str(out),
                    teacher="rounds-box", student="unet", student_options=TINY, img_size=64, epochs=1, batch=4,
                    val_fraction=0.3, seed=0, rounds=3)
    return MedDistillConfig(**{**settings, **overrides})


def round_of(path) -> int:
    return int(Path(path).parent.name)


def student_map(stem: str, k: int) -> np.ndarray:
    """Round 1: the objects grown by a pixel; round 2: the objects; round 3: shifted by 3 px."""
    prob = np.zeros((HEIGHT, WIDTH), np.float32)
    grow, shift = (1, 0) if k == 1 else (0, 0) if k == 2 else (0, 3)
    if stem in OBJECTS:
        x1, y1, x2, y2 = OBJECTS[stem]
        prob[y1 - grow + shift:y2 + grow + shift, x1 - grow + shift:x2 + grow + shift] = 0.95
    if stem in SPURIOUS and k < 3:
        x1, y1, x2, y2 = SPURIOUS[stem]
        prob[y1:y2, x1:x2] = 0.9
    return prob


class FakeTrainer:
    """Stands in for train_meddistill: checks its inputs, writes a run folder, records the call."""

    def __init__(self, fail_in_round: int | None = None) -> None:
        self.calls: list[MedDistillConfig] = []
        self.fail_in_round = fail_in_round
        self.collapse_in_round: int | None = None

    def __call__(self, config: MedDistillConfig, **_) -> Path:
        k = round_of(config.out)
        assert config.rounds == 1 and not config.overwrite
        with h5py.File(config.cache_path(), "r") as cache:   # the targets come from this round's boxes
            assert cache.attrs["boxes_sha256"] == file_sha256(config.boxes)
        self.calls.append(config)
        if k == self.fail_in_round:
            self.fail_in_round = None
            raise KeyboardInterrupt(f"killed in round {k}")
        run = Path(config.out)
        run.mkdir(parents=True, exist_ok=True)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(
            1, 1, kernel_initializer=keras.initializers.Constant(float(k)))])
        model.save(str(run / "student.keras"))
        write_json_atomic(run / "preprocessing.json", ModelCard(PreprocessConfig(size=64), 2).to_dict())
        write_json_atomic(run / "config.json", config.to_dict())
        collapse = {"collapsed": k == self.collapse_in_round, "reason": "predicts nothing"}
        write_json_atomic(run / "summary.json", {"best_val_dice": 0.5 + k / 100, "epochs_run": 1,
                                                 "collapse": collapse})
        return run


class FakePredictions:
    def __init__(self) -> None:
        self.rounds: list[int] = []

    def __call__(self, run_dir, image_dir, entries, batch=8):
        k = round_of(run_dir)
        self.rounds.append(k)
        for entry in entries:
            yield entry, student_map(entry.stem, k)


@pytest.fixture
def fakes(monkeypatch):
    trainer, predictions = FakeTrainer(), FakePredictions()
    monkeypatch.setattr(trainer_module, "train_meddistill", trainer)
    monkeypatch.setattr(rounds, "predict_images", predictions)
    return trainer, predictions


def boxes_of(path) -> dict[str, list[list[float]]]:
    return {e.stem: [b.xyxy for b in e.boxes] for e in read_boxes(path).images}


def test_round_k_plus_1_prompts_targets_and_start_come_from_round_k(squares, fakes):
    trainer, predictions = fakes
    out = squares["root"] / "out"
    assert rounds.run_rounds(make_config(squares, out)) == out

    # round 1 distils from the detector's own file; each later round starts from the previous student
    assert [round_of(c.out) for c in trainer.calls] == [1, 2, 3]
    assert [c.init_from for c in trainer.calls] == [None, str(out / "rounds/1/run"), str(out / "rounds/2/run")]
    assert [c.boxes for c in trainer.calls] == [str(out / f"rounds/{k}/boxes.json") for k in (1, 2, 3)]
    assert [c.cache for c in trainer.calls] == [str(out / f"rounds/{k}/teacher_cache.h5") for k in (1, 2, 3)]
    assert file_sha256(out / "rounds/1/boxes.json") == file_sha256(squares["boxes"])
    assert predictions.rounds == [1, 2, 3]

    # round 2's prompts: round 1's student (objects grown by 1 px), widened by 2 px, merged with the detector's
    second = boxes_of(out / "rounds/2/boxes.json")
    assert second["img0"] == [[7.0, 7.0, 23.0, 23.0]]           # replaced
    assert second["img1"] == [[27.0, 2.0, 43.0, 18.0]]          # replaced
    assert second["img2"] == [[9.0, 17.0, 25.0, 33.0]]          # the detector missed it: added
    assert second["img3"] == [[48.0, 28.0, 60.0, 40.0]]         # a confident false positive: added
    assert second["img4"] == [[2.0, 27.0, 18.0, 43.0]]
    assert second["img5"] == [list(map(float, DETECTOR["img5"]))]  # kept (the student box lies inside it)
    assert second["img6"] == []
    source = read_boxes(out / "rounds/2/boxes.json").source
    assert source["kind"] == "student-round" and source["round"] == 1
    assert source["student"] == str(out / "rounds/1/run")
    assert source["confirmed_negatives"] == ["img6"]
    assert source["added"] == {"img2": [0], "img3": [0]}
    assert source["stats"]["replaced"] == 3 and source["stats"]["kept"] == 1 and source["stats"]["added"] == 2
    assert source["stats"]["images_gaining"] == 2 and source["rule"] == rounds.PromptRule().to_dict()

    # round 2's teacher ran on those prompts
    with h5py.File(out / "rounds/2/teacher_cache.h5", "r") as cache:
        fused = cache["images/img2/fused"][()]
        assert fused[17:33, 9:25].min() == pytest.approx(0.8) and fused.sum() == pytest.approx(0.8 * 16 * 16)
        assert cache["images/img3/fused"][()].max() == 0.0     # it sees nothing at the student's box

    # round 3's prompts: round 2's student; the teacher-rejected box is not proposed again
    third = boxes_of(out / "rounds/3/boxes.json")
    assert third["img0"] == [[8.0, 8.0, 22.0, 22.0]] and third["img3"] == []
    source = read_boxes(out / "rounds/3/boxes.json").source
    assert source["round"] == 2 and source["confirmed_negatives"] == ["img3", "img6"]
    assert source["rejected"] == {"img3": [[48.0, 28.0, 60.0, 40.0]]}
    assert source["stats"]["teacher_rejected"] == 1 and source["stats"]["images_losing"] == 1

    # rounds.csv, the records and the export of the selected round
    with open(out / "rounds.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["round"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["added"] == "2" and rows[1]["replaced"] == "3" and rows[1]["images_gaining"] == "2"
    assert rows[0]["decision"] == rows[1]["decision"] == "continue" and rows[2]["decision"].startswith("stop")
    records = [json.loads((out / f"rounds/{k}/round.json").read_text()) for k in (1, 2, 3)]
    scores = [r["score"] for r in records]
    assert scores[1] > scores[0] + 0.01 and scores[2] < scores[1]      # round 3's student is off by 3 px
    assert records[2]["stop"] and "no gain" in records[2]["reasons"][0]
    assert records[1]["agreement_previous"] < 0.98
    assert records[0]["agreement_first_teacher"] == records[0]["score"]
    assert float(rows[1]["agreement_first_teacher"]) == records[1]["agreement_first_teacher"]
    assert [r["selected"] for r in rows] == ["False", "True", "False"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"]["selected"] == 2 and summary["best_val_dice"] == pytest.approx(0.52)
    assert [r["round"] for r in summary["rounds"]["per_round"]] == [1, 2, 3]
    exported = keras.saving.load_model(str(out / "student.keras"), compile=False)
    assert float(exported.get_weights()[0].ravel()[0]) == 2.0
    assert (out / "preprocessing.json").is_file() and (out / "rounds.log").is_file()
    assert MedDistillConfig.load(out / "config.json") == make_config(squares, out)


def test_a_stop_in_round_2_resumes_without_redoing_round_1(squares, fakes):
    trainer, predictions = fakes
    trainer.fail_in_round = 2
    out = squares["root"] / "out"
    config = make_config(squares, out, rounds=2)
    with pytest.raises(KeyboardInterrupt):
        rounds.run_rounds(config)
    record = out / "rounds/1/round.json"
    assert record.is_file() and (out / "rounds/2/boxes.json").is_file()
    assert not (out / "rounds/2/round.json").exists() and not (out / "student.keras").exists()
    before = record.stat().st_mtime_ns
    rounds.run_rounds(config)
    assert [round_of(c.out) for c in trainer.calls] == [1, 2, 2]     # round 1 trained once
    assert predictions.rounds == [1, 2]                                # and predicted once
    assert record.stat().st_mtime_ns == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"]["rounds_run"] == 2 and "--rounds 2 reached" in summary["rounds"]["stopped"]

    # finished: a rerun redoes no round; more rounds continue after the last one
    rounds.run_rounds(config)
    assert len(trainer.calls) == 3 and predictions.rounds == [1, 2]
    rounds.run_rounds(make_config(squares, out, rounds=3))
    assert [round_of(c.out) for c in trainer.calls] == [1, 2, 2, 3] and predictions.rounds == [1, 2, 3]


def test_stopping_rules(squares, fakes):
    out = squares["root"] / "out"
    rounds.run_rounds(make_config(squares, out, rounds=4), stop=rounds.StopRule(margin=-1.0, converged=0.5))
    record = json.loads((out / "rounds/2/round.json").read_text())
    assert record["stop"] and record["reasons"][0].startswith("converged")
    assert not (out / "rounds/3").exists()
    assert rounds.stop_reasons(0.7, {"score": 0.695}, None, False, rounds.StopRule())[0].startswith("no gain")
    assert rounds.stop_reasons(0.8, {"score": 0.7}, 0.9, False, rounds.StopRule()) == []
    assert rounds.stop_reasons(0.8, None, None, True, rounds.StopRule())[0].startswith("prompts unchanged")
    assert rounds.select_round([{"round": 1, "score": 0.7}, {"round": 2, "score": 0.7}])["round"] == 1
    assert rounds.select_round([{"round": 1, "score": 0.6}, {"round": 2, "score": 0.7, "collapsed": True}])["round"] == 1


def test_a_collapsed_round_ends_the_rounds_and_is_not_exported(squares, fakes):
    trainer, _ = fakes
    trainer.collapse_in_round = 2
    out = squares["root"] / "out"
    rounds.run_rounds(make_config(squares, out, rounds=3))
    records = [json.loads((out / f"rounds/{k}/round.json").read_text()) for k in (1, 2)]
    assert records[1]["collapsed"] and records[1]["reasons"][0] == "collapsed: predicts nothing"
    assert records[1]["score"] > records[0]["score"] and not (out / "rounds/3").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"]["selected"] == 1 and not summary["collapse"]["collapsed"]


def test_changed_settings_and_bad_options_are_refused(squares, fakes):
    out = squares["root"] / "out"
    rounds.run_rounds(make_config(squares, out, rounds=2))
    with pytest.raises(MedistillError, match="lr differ"):
        rounds.run_rounds(make_config(squares, out, rounds=2, lr=0.05))
    rounds.run_rounds(make_config(squares, out, rounds=2, epochs=5))   # a resumable change
    with pytest.raises(MedistillError, match="--val-fraction"):
        rounds.run_rounds(make_config(squares, squares["root"] / "b", val_fraction=0.0))
    with pytest.raises(MedistillError, match="--live-teacher"):
        rounds.run_rounds(make_config(squares, squares["root"] / "c", live_teacher=True))
    changed = read_boxes(squares["boxes"])
    changed.images[0].boxes = []
    write_boxes(squares["boxes"], changed)
    with pytest.raises(MedistillError, match="changed since round 1"):
        rounds.run_rounds(make_config(squares, out, rounds=2))
    # a single run is refused where rounds are, and rounds where a single run is
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(MedistillError, match="holds a run of"):
        real_train_meddistill(make_config(squares, out, rounds=1))
    assert sorted(p.name for p in out.iterdir()) == before
    single = squares["root"] / "single"
    single.mkdir()
    (single / ".medistill-run.json").write_text(json.dumps({"medistill": "run", "kind": "MedDistillConfig"}))
    with pytest.raises(MedistillError, match="holds a run of meddistill.py"):
        rounds.run_rounds(make_config(squares, single))
    with pytest.raises(MedistillError, match="not in --image_dir"):
        rounds.run_rounds(make_config(squares, squares["root"] / "e", image_dir=str(squares["root"])))
    assert not (squares["root"] / "e").exists()
    (squares["root"] / "d").mkdir()
    (squares["root"] / "d" / "notes.txt").write_text("mine")
    with pytest.raises(MedistillError, match="not empty"):
        rounds.run_rounds(make_config(squares, squares["root"] / "d"))


def test_every_rounds_cache_is_stored_as_the_run_asks(squares, fakes):
    """A full cache (--cache-features full, or --co-learn) in every round, not only the first."""
    trainer, _ = fakes
    out = squares["root"] / "full"
    rounds.run_rounds(make_config(squares, out, rounds=2, cache_features="full"))
    assert [round_of(c.out) for c in trainer.calls] == [1, 2]
    for config in trainer.calls:
        with h5py.File(config.cache_path(), "r") as cache:
            assert cache.attrs["storage"] == "full", config.cache_path()
