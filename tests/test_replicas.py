"""Two replicas equal one device: ``medistill train`` and every ``medistill distill`` recipe.

Each configuration runs as ``python -m medistill`` in a process of its own (two
MirroredStrategy objects in one process collide on collective keys), on the same global
batch: once on one device, once over two logical CPU devices (``--cpu-replicas 2``).
Their final weights (written to ``MEDISTILL_WORKER_WEIGHTS_DIR``) and their loss
histories must agree, as MedDistill's do (tests/distill/test_meddistill_distributed.py).
Any difference between the distributed step and the one-device step beyond rounding
(how the batch is split, how losses and gradients are reduced, batch-norm statistics)
fails here.

Tolerance: one epoch of 4 Adam steps at lr 3e-3 moves a weight by up to about 1.2e-2.
With batch-norm statistics synchronised across the replicas the two runs agree to
about 1e-3 (measured with two teachers: 1e-5 to 8e-5 for CAKD+MSKD and SIKD, 5e-4 for
the supervised trainer, 1.2e-3 to 2.4e-3 for KAMSD, 7e-4 to 1.8e-3 for SSCD's moving
variances, which are near 2) and their losses to a relative 3e-4 (SSCD's hard term
1.3e-3). Without synchronised statistics the trainable weights differ by 9e-3 to
1.4e-2, as much as they moved, and the moving variances by 0.07 to 0.11.

Every trainer synchronises batch norm across replicas
(``RunSession.synchronise_batchnorm`` in ``medistill/train/session.py``); without it
these tests fail by the margins above.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from medistill.data.phantoms import generate_phantoms
from medistill.networks import build_student
from medistill.train.session import WORKER_WEIGHTS_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = {"base_filters": 4, "depth": 2}
# One epoch of 4 steps at global batch 2: no augmentation, no validation split.
COMMON = ["--student", "unet", "--student-options", json.dumps(TINY), "--img-size", "64", "--epochs", "1",
          "--batch", "2", "--steps-per-epoch", "4", "--lr", "3e-3", "--no-augment", "--val-fraction", "0",
          "--seed", "0"]
WEIGHTS_RTOL, WEIGHTS_ATOL, LOSS_RTOL = 1e-3, 3e-3, 1e-3
# SSCD's hard term counts pixels past a threshold: a 1e-4 change of a weight moves some
# across it (measured with synchronised batch norm: 1.3e-3).
LOSS_RTOL_SSCD = 5e-3
# KAMSD's Adam steps on weights with tiny gradients amplify the rounding (measured 2.4e-3).
WEIGHTS_ATOL_KAMSD = 5e-3
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """8 binary phantoms at 64 px and an untrained tiny deep-supervision teacher (all recipes take it)."""
    root = tmp_path_factory.mktemp("replicas")
    generate_phantoms(root / "data", 8, size=64, seed=0)
    keras.utils.set_random_seed(0)  # the same teacher in every session
    build_student("unet", in_channels=1, num_classes=1, deep_supervision=True, **TINY).save(root / "teacher.keras")
    return {"data": root / "data", "teacher": root / "teacher.keras"}


def one_device_and_two_replicas(argv: list[str], tmp_path: Path, read_worker_weights):
    """Run ``argv`` on one device and on two replicas (at once); their weights and histories."""
    runs = {}
    for name, extra in (("one", []), ("two", ["--cpu-replicas", "2"])):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", WORKER_WEIGHTS_ENV: str(tmp_path / f"weights_{name}")}
        process = subprocess.Popen([sys.executable, "-m", "medistill", *argv, "--out", str(tmp_path / name),
                                    *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        runs[name] = process
    stderr = {}
    try:
        for name, process in runs.items():
            _, stderr[name] = process.communicate(timeout=600)
            assert process.returncode == 0, f"the {name} run failed:\n{stderr[name][-4000:]}"
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
    assert "MirroredStrategy with 2 replica(s)" in stderr["two"]
    assert "OneDeviceStrategy with 1 replica(s)" in stderr["one"]
    for name in runs:
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["replicas"] == (2 if name == "two" else 1)
    weights = {name: read_worker_weights(tmp_path / f"weights_{name}")[0] for name in runs}
    history = {name: pd.read_csv(tmp_path / name / "history.csv") for name in runs}
    return weights, history


def check_same_run(weights: dict, history: dict, loss_rtol: float = LOSS_RTOL,
                   weights_atol: float = WEIGHTS_ATOL) -> None:
    one, two = weights["one"], weights["two"]
    assert len(one) == len(two) > 0
    losses = [column for column in history["one"].columns if column not in ("epoch", "lr")]
    assert "loss" in losses
    assert list(history["two"].columns) == list(history["one"].columns)
    assert history["two"]["epoch"].tolist() == history["one"]["epoch"].tolist() == [1]
    np.testing.assert_allclose(history["two"][losses].to_numpy(), history["one"][losses].to_numpy(),
                               rtol=loss_rtol, err_msg="the loss history differs")
    gaps = [float(np.max(np.abs(a - b))) for a, b in zip(one, two)]
    for index, (a, b) in enumerate(zip(one, two)):
        np.testing.assert_allclose(b, a, rtol=WEIGHTS_RTOL, atol=weights_atol,
                                   err_msg=f"weight {index} differs (largest gap of all weights {max(gaps):.2e})")


def test_supervised_training_on_two_replicas_is_the_one_device_run(prepared, tmp_path, read_worker_weights):
    argv = ["train", "--data", str(prepared["data"]), *COMMON]
    check_same_run(*one_device_and_two_replicas(argv, tmp_path, read_worker_weights))


@pytest.mark.parametrize("recipe", ["kamsd", "cakd-mskd", "sikd", "sscd"])
def test_a_recipe_on_two_replicas_is_the_one_device_run(recipe, prepared, tmp_path, read_worker_weights):
    argv = ["distill", "--recipe", recipe, "--data", str(prepared["data"]), "--teacher-model",
            str(prepared["teacher"]), *COMMON]
    if recipe == "sscd":
        argv += ["--labelled-fraction", "0.5"]
    check_same_run(*one_device_and_two_replicas(argv, tmp_path, read_worker_weights),
                   loss_rtol=LOSS_RTOL_SSCD if recipe == "sscd" else LOSS_RTOL,
                   weights_atol=WEIGHTS_ATOL_KAMSD if recipe == "kamsd" else WEIGHTS_ATOL)
