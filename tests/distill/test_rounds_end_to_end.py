"""Refinement rounds end to end with the real trainer on 64 px phantoms (slow).

The wiring of each round with a fake trainer is tested in test_rounds.py; here the real
trainer runs: round 2 starts from round 1's weights, OUT predicts like the selected round,
and a run killed in round 2 continues it without redoing round 1.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from medistill.boxes.boxes_file import read_boxes, write_boxes
from medistill.distill.meddistill import rounds
from medistill.distill.meddistill.config import MedDistillConfig
from medistill.fileio import file_sha256

ROOT = Path(__file__).resolve().parents[2]
TINY = {"base_filters": 4, "depth": 2}


@pytest.mark.slow
def test_real_rounds_on_phantoms_export_the_selected_round(tmp_path, monkeypatch):
    """The real trainer: round 2 starts from round 1's weights; OUT predicts like the selected round."""
    from medistill.boxes.oracle import boxes_from_masks
    from medistill.data import load_sample, pair_folder
    from medistill.data.phantoms import generate_phantoms
    from medistill.evaluate.predict_eval import EvalConfig, predict_and_evaluate
    from medistill.export import load_predictor
    from medistill.train import method as method_module
    from medistill.train.loop import TrainingLoop

    generate_phantoms(tmp_path / "ph", 10, size=64, seed=0)
    write_boxes(tmp_path / "boxes.json", boxes_from_masks(tmp_path / "ph" / "masks", tmp_path / "ph" / "images"))
    truth = {s.stem: load_sample(s)[1] for s in pair_folder(tmp_path / "ph" / "images", tmp_path / "ph" / "masks")}
    real_predict = rounds.predict_images

    def predict(run_dir, image_dir, entries, batch=8):
        if Path(run_dir).parent.name == "2":     # round 2: the real student
            yield from real_predict(run_dir, image_dir, entries, batch)
            return
        for entry in entries:                    # round 1: a student that found the lesions
            yield entry, (truth[entry.stem] > 0).astype(np.float32) * 0.95

    starts: dict[str, list[np.ndarray]] = {}

    class SpyLoop(TrainingLoop):
        def fit(self, *args, **kwargs):
            starts[self.run_dir.parent.name] = [w.copy() for w in self.model.get_weights()]
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(rounds, "predict_images", predict)
    monkeypatch.setattr(method_module, "TrainingLoop", SpyLoop)  # the skeleton every trainer runs on
    out = tmp_path / "out"
    config = MedDistillConfig(image_dir=str(tmp_path / "ph" / "images"), boxes=str(tmp_path / "boxes.json"),
                              out=str(out), teacher="grabcut", student="unet", student_options=TINY, img_size=64,
                              epochs=2, batch=4, lr=3e-3, val_fraction=0.2, seed=0, rounds=2, keep_collapsed=True)
    rounds.run_rounds(config)

    second = read_boxes(out / "rounds/2/boxes.json")
    assert second.source["kind"] == "student-round" and second.source["stats"]["replaced"] > 0
    # boxes from masks list every object: no student box is added, every empty image is a negative
    detector = read_boxes(tmp_path / "boxes.json")
    assert detector.source["kind"] == "masks" and not second.source["student_adds_boxes"]
    assert second.source["stats"]["added"] == 0
    assert second.source["confirmed_negatives"] == sorted(e.stem for e in detector.images if not e.boxes)
    with h5py.File(out / "rounds/2/teacher_cache.h5", "r") as cache:
        assert cache.attrs["boxes_sha256"] == file_sha256(out / "rounds/2/boxes.json")
    assert MedDistillConfig.load(out / "rounds/2/run/config.json").init_from == str(out / "rounds/1/run")
    first = keras.saving.load_model(str(out / "rounds/1/run/student.keras"), compile=False).get_weights()
    assert len(starts["2"]) == len(first)
    assert all(np.array_equal(a, b) for a, b in zip(starts["2"], first))       # round 2 starts from round 1
    assert not all(np.array_equal(a, b) for a, b in zip(starts["1"], first))   # (which trained)

    summary = json.loads((out / "summary.json").read_text())
    selected = out / f"rounds/{summary['rounds']['selected']}/run"
    assert summary["rounds"]["selected_run"] == str(selected)
    mine = keras.saving.load_model(str(out / "student.keras"), compile=False).get_weights()
    theirs = keras.saving.load_model(str(selected / "student.keras"), compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs))
    image = load_sample(pair_folder(tmp_path / "ph" / "images")[0])[0]
    np.testing.assert_allclose(load_predictor(out).predict(image), load_predictor(selected).predict(image), atol=1e-6)
    np.testing.assert_allclose(load_predictor(out / "saved_model").predict(image),
                               load_predictor(selected).predict(image), atol=1e-5)
    metrics = predict_and_evaluate(EvalConfig(image_dir=str(tmp_path / "ph" / "images"), model_path=str(out),
                                              mask_dir=str(tmp_path / "ph" / "masks"),
                                              out=str(tmp_path / "eval" / "metrics.csv")))
    assert metrics is not None


DRIVER = """
import json, logging, sys
import numpy as np
from medistill.data import load_sample, pair_folder
from medistill.distill.meddistill import rounds
from medistill.distill.meddistill.config import MedDistillConfig

settings = json.loads(sys.argv[1])
truth = {s.stem: load_sample(s)[1] for s in pair_folder(settings.pop("images"), settings.pop("masks"))}
real = rounds.predict_images

def predict(run_dir, image_dir, entries, batch=8):   # round 1's student found the lesions
    if run_dir.parent.name != "1":
        yield from real(run_dir, image_dir, entries, batch)
        return
    for entry in entries:
        yield entry, (truth[entry.stem] > 0).astype(np.float32) * 0.95

rounds.predict_images = predict
logging.getLogger("medistill").setLevel(logging.INFO)   # as the command line does
rounds.run_rounds(MedDistillConfig(**settings))
"""


@pytest.mark.slow
def test_kill_in_round_2_and_rerun_continues_it(tmp_path, wait_for_epochs):
    from medistill.boxes.oracle import boxes_from_masks
    from medistill.data.phantoms import generate_phantoms

    generate_phantoms(tmp_path / "ph", 8, size=64, seed=1)
    write_boxes(tmp_path / "boxes.json", boxes_from_masks(tmp_path / "ph" / "masks", tmp_path / "ph" / "images"))
    out = tmp_path / "out"
    settings = dict(image_dir=str(tmp_path / "ph" / "images"), boxes=str(tmp_path / "boxes.json"), out=str(out),
                    teacher="grabcut", student="unet", student_options=TINY, img_size=64, epochs=2, batch=2,
                    lr=3e-3, val_fraction=0.25, seed=0, rounds=2, keep_collapsed=True,
                    images=str(tmp_path / "ph" / "images"), masks=str(tmp_path / "ph" / "masks"))
    (tmp_path / "driver.py").write_text(DRIVER)
    args = [sys.executable, str(tmp_path / "driver.py"), json.dumps(settings)]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_for_epochs(out / "rounds/2/run", 1, process)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    first = out / "rounds/1/round.json"
    assert first.is_file() and not (out / "rounds/2/round.json").exists() and not (out / "summary.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (first, out / "rounds/1/run/student.keras",
                                                out / "rounds/2/boxes.json")}
    history = (out / "rounds/1/run/history.csv").read_text()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)     # the same command
    assert result.returncode == 0, result.stderr[-4000:]
    assert "round 1: already finished" in (out / "rounds.log").read_text()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps             # round 1 not redone
    assert (out / "rounds/1/run/history.csv").read_text() == history
    with open(out / "rounds/2/run/history.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"]["rounds_run"] == 2
