"""Mutation testing of medistill's wiring (issue 12): do the tests catch one-line bugs?

A small mutation tester of our own (``mutmut`` would rerun the whole ~20 CPU-minute suite
per mutant). :data:`MUTANTS` is an explicit list; each mutant is one file, an exact
source snippet that must occur there exactly once, its replacement, a one-line
description and the tests that should kill it (test files, optionally with a ``-k``
expression). For each mutant the script

1. copies the working tree (``git ls-files --cached --others --exclude-standard``: the
   tracked files and new files git does not ignore) into ``WORK/tree`` once per run;
2. applies the mutant there (the file is restored afterwards);
3. runs ``python -m pytest -x -q -p no:cacheprovider <tests> [-k EXPR]`` with the
   repository's interpreter from the copy, ``PYTHONPATH`` set to the copy, so the
   copy's ``medistill`` is imported and not the editable install (checked before any
   mutant: ``medistill.__file__`` must lie in the copy);
4. records ``killed`` (the tests fail), ``survived`` (they pass), ``timeout`` or
   ``not found`` (the snippet does not occur exactly once: an error in the list, not a
   survivor) in ``WORK/results.json``.

Resumable: a mutant already recorded for the same source hash (the original file, the
mutant's definition and the text of its targeted test files) is skipped; ``--rerun ID``
forces one. ``--probe`` first runs a probe mutant whose effect is certain (it makes the
copy's ``medistill/losses/label_free.py`` fail at import), to prove the tests import
the copy. The section of ``benchmarks/RESULTS.md`` lists every mutant, the score
(killed / (killed + survived)) and each survivor with the reason it is harmless or the
test that now kills it (:data:`SURVIVOR_NOTES`).

Usage (from the repository root; CPU is scarce, so nice it)::

    nice -n 10 .venv/bin/python benchmarks/bench_mutants.py --work /tmp/medistill-mutants
    .venv/bin/python benchmarks/bench_mutants.py --list                # the mutants, nothing run
    .venv/bin/python benchmarks/bench_mutants.py --only loss-dice-empty weight-ulwr-zero
    .venv/bin/python benchmarks/bench_mutants.py --report-only         # rewrite the section from results.json
"""

from __future__ import annotations

import common  # noqa: F401  (environment defaults before anything imports TensorFlow)

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import REPO_ROOT, markdown_table, publish

DEFAULT_WORK = Path("/tmp/medistill-mutants")
DEFAULT_TIMEOUT = 900
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: ``old`` (exactly once in ``file``) becomes ``new``."""

    id: str
    file: str
    old: str
    new: str
    description: str
    tests: tuple[str, ...]
    k: str | None = None

    def pytest_args(self) -> list[str]:
        args = list(self.tests)
        if self.k:
            args += ["-k", self.k]
        return args


M = Mutant
LF = "medistill/losses/label_free.py"
DL = "medistill/losses/distillation.py"
WT = "medistill/distill/weighting.py"
DS = "medistill/distill/meddistill/distiller.py"
DA = "medistill/distill/meddistill/data.py"
TR = "medistill/distill/meddistill/trust.py"
MT = "medistill/distill/meddistill/trainer.py"
CA = "medistill/teachers/cache.py"
LO = "medistill/train/loop.py"
SE = "medistill/train/session.py"
EX = "medistill/export.py"
RB = "medistill/distill/recipes/base.py"
CK = "medistill/distill/recipes/cakd_mskd.py"
SC = "medistill/distill/recipes/sscd.py"

T_LF = "tests/losses/test_label_free.py"
T_DL = "tests/distill/test_distillation_losses.py"
T_WT = "tests/distill/test_weighting.py"
T_LFS = "tests/distill/test_label_free_student.py"
T_MDT = "tests/distill/test_meddistill_train.py"
T_MDD = "tests/distill/test_meddistill_data.py"
T_TC = "tests/teachers/test_teacher_cache.py"
T_LOOP = "tests/train/test_loop.py"
T_WIRE = "tests/test_wiring_mutants.py"

MUTANTS: list[Mutant] = [
    # ---------------------------------------------------------------- losses/label_free.py
    M("lf-dice-empty-rule", LF,
      "return tf.where(mass >= min_target, 1.0 - dice, tf.zeros_like(dice))",
      "return 1.0 - dice",
      "soft Dice: the empty-target rule dropped (an empty target gets 1 − Dice, not 0)",
      (T_LF,), "dice_term"),
    M("lf-projection-axis", LF,
      "onto_x = tf.reduce_max(in_box, axis=2)",
      "onto_x = tf.reduce_max(in_box, axis=3)",
      "box projection: the x projection taken over the wrong axis",
      (T_LF, T_WIRE), "projection"),
    M("lf-outside-trust-ignored", LF,
      "return tf.stop_gradient(tf.cast(tf.reshape(trust, (-1,)), tf.float32)) * mean",
      "return mean + 0.0 * tf.cast(tf.reshape(trust, (-1,)), tf.float32)",
      "outside-box term: the per-image trust ignored",
      (T_LF,), "outside"),
    M("lf-confidence-formula", LF,
      "tf.pow(tf.abs(2.0 * soft - 1.0), float(gamma))",
      "tf.pow(tf.abs(soft - 1.0), float(gamma))",
      "confidence weights |S − 1| instead of |2S − 1|",
      (T_LF,), "confidence"),
    M("lf-weighted-bce-unnormalised", LF,
      "return tf.reduce_sum(weights * bce, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), WEIGHT_EPS)",
      "return tf.reduce_mean(weights * bce, axis=1)",
      "confidence-weighted BCE divided by the pixel count instead of the weights' sum",
      (T_LF,), None),
    M("lf-raster-edge", LF,
      "rows[i] = (centres >= y1) & (centres < y2)",
      "rows[i] = (centres > y1) & (centres <= y2)",
      "rasterised boxes: rows by the wrong pixel-centre rule",
      (T_LF, T_WIRE), "rasterised"),
    # ---------------------------------------------------------------- losses/distillation.py
    M("dl-feature-teacher-gradient", DL,
      "teacher = tf.stop_gradient(tf.cast(teacher_feat, tf.float32))",
      "teacher = tf.cast(teacher_feat, tf.float32)",
      "feature losses: the teacher side not a constant (gradient reaches the teacher)",
      (T_DL,), "feature"),
    M("dl-agreement-empty-rule", DL,
      "return tf.where(total > 0, 2.0 * intersection / tf.maximum(total, 1.0), tf.ones_like(total))",
      "return tf.where(total > 0, 2.0 * intersection / tf.maximum(total, 1.0), tf.zeros_like(total))",
      "agreement Dice: two empty maps score 0 instead of 1",
      (T_DL,), "agreement"),
    M("dl-prob-mse-on-logits", DL,
      "return tf.reduce_mean(tf.square(tf.sigmoid(z) - target), axis=1)",
      "return tf.reduce_mean(tf.square(z - target), axis=1)",
      "probability MSE computed on raw logits",
      (T_DL,), "prob_mse"),
    # ---------------------------------------------------------------- distill/weighting.py
    M("wt-ulwr-zero-uncertainty", WT,
      "weights = ulwr_weights(uncertainty, self.w3, has_feature)",
      "weights = ulwr_weights(tf.zeros_like(uncertainty), self.w3, has_feature)",
      "ULWR layer fed zero uncertainty",
      (T_WT,), None),
    M("wt-ulwr-penalty-sign", WT,
      "        total = penalty\n",
      "        total = -penalty\n",
      "ULWR: the penalty subtracted instead of added",
      (T_WT,), None),
    M("wt-ulwr-w2-sign", WT,
      "w2 = tf.sigmoid(1.0 - sigma2)",
      "w2 = tf.sigmoid(1.0 + sigma2)",
      "ULWR: w2 = sigmoid(1 + σ²)",
      (T_WT,), None),
    M("wt-ulwr-extra-terms-dropped", WT,
      "            total = total + terms[name]\n",
      "",
      "ULWR: the terms outside the released three (dice, proj, outside) left out of the total",
      (T_WT, T_WIRE), "ulwr"),
    M("wt-learned-regulariser-sign", WT,
      "total = total + tf.exp(-s) * terms[name] + s",
      "total = total + tf.exp(-s) * terms[name] - s",
      "learned weighting: the regulariser s_i subtracted",
      (T_WT,), None),
    # ---------------------------------------------------------------- distill/meddistill/distiller.py
    M("ds-feature-detached", DS,
      "return self.feature_fn(self.projection(outputs[self.feature_layer]), batch[\"features\"])",
      "return self.feature_fn(self.projection(tf.stop_gradient(outputs[self.feature_layer])), batch[\"features\"])",
      "feature term detached from the student (only the projection learns)",
      (T_MDT, T_WIRE), "gradients_reach_student or feature_term_alone"),
    M("ds-trust-ignored", DS,
      "terms = {name: trust * value for name, value in terms.items()}",
      "terms = {name: value for name, value in terms.items()}",
      "the example's trust weight ignored",
      (T_LFS,), "trust_zero"),
    M("ds-colearn-not-flipped", DS,
      "return self.colearn_loss(flip_like_batch(decoder_logits, batch[\"flip\"]), student_prob, batch[\"soft\"])",
      "return self.colearn_loss(decoder_logits, student_prob, batch[\"soft\"])",
      "co-learning: the decoder output not flipped with its example",
      (T_MDT, T_WIRE), "flipped"),
    M("ds-flip-axes-swapped", DS,
      "maps = tf.where(flips[:, 0, None, None], tf.reverse(maps, [2]), maps)",
      "maps = tf.where(flips[:, 0, None, None], tf.reverse(maps, [1]), maps)",
      "flip_like_batch: a left-right flip reverses rows",
      (T_MDT,), "decoder_output_is_flipped"),
    M("ds-weighting-zero-uncertainty", DS,
      "total, weights = self.weighting(terms, batch[\"uncertainty\"])",
      "total, weights = self.weighting(terms, tf.zeros_like(batch[\"uncertainty\"]))",
      "the distiller feeds the weighting zero uncertainty",
      (T_LFS,), "ulwr_receives"),
    M("ds-projection-not-optimised", DS,
      "            variables += self.projection.trainable_variables\n",
      "            pass\n",
      "the feature projection left out of the optimised variables",
      (T_MDT,), "gradients_reach_student_projection"),
    M("ds-outside-trust-constant", DS,
      "return outside_box_per_example(logits, batch[\"inside\"], outside_trust(batch[\"box_weights\"]))",
      "return outside_box_per_example(logits, batch[\"inside\"], tf.ones_like(batch[\"box_weights\"][:, 0]))",
      "outside term: trust 1 for every image instead of the detector's best score",
      (T_WIRE,), "outside_trust"),
    M("ds-step-per-replica-mean", DS,
      "return tf.nn.compute_average_loss(tf.cast(per_example, tf.float32), global_batch_size=global_batch)",
      "return tf.reduce_mean(tf.cast(per_example, tf.float32))",
      "MedDistill step: losses divided by the per-replica batch instead of the global one",
      ("tests/distill/test_meddistill_distributed.py",), "two_replicas_match_one_device"),
    # ---------------------------------------------------------------- distill/meddistill/data.py
    M("da-box-rows-cols-not-flipped", DA,
      "\"rows\": rows[:, ::-1] if flip[1] else rows, \"cols\": cols[:, ::-1] if flip[0] else cols,",
      "\"rows\": rows, \"cols\": cols,",
      "box indicators not flipped with the image",
      (T_LFS,), "box_indicators_are_flipped"),
    M("da-box-flip-axes-swapped", DA,
      "\"rows\": rows[:, ::-1] if flip[1] else rows, \"cols\": cols[:, ::-1] if flip[0] else cols,",
      "\"rows\": rows[:, ::-1] if flip[0] else rows, \"cols\": cols[:, ::-1] if flip[1] else cols,",
      "box indicators flipped along the other axis",
      (T_LFS,), "box_indicators_are_flipped"),
    M("da-inside-not-flipped", DA,
      "\"inside\": flip_maps(data.inside(i), flip),",
      "\"inside\": data.inside(i),",
      "the inside-the-boxes map not flipped with the image",
      (T_LFS,), "box_indicators_are_flipped"),
    M("da-uncertainty-zero", DA,
      "uncertainty=np.asarray(sigma2 if soft else np.zeros(len(entries)), np.float32),",
      "uncertainty=np.zeros(len(entries), np.float32),",
      "the assembled data hold σ² = 0 (ULWR fed zero uncertainty)",
      (T_LFS,), "ulwr_receives"),
    # ---------------------------------------------------------------- distill/meddistill/trust.py
    M("tr-unconfirmed-negative-full", TR,
      "            weights[i] = UNCONFIRMED_NEGATIVE\n",
      "            weights[i] = 1.0\n",
      "negatives rule: an unconfirmed negative trusted fully",
      (T_LFS,), "negatives_rule or trust_weights"),
    M("tr-quality-ignored", TR,
      "weights = weights * np.asarray(quality, np.float32)",
      "weights = weights",
      "quality-control weights not multiplied into the trust",
      (T_LFS,), "trust_weights_multiply"),
    # ---------------------------------------------------------------- distill/meddistill/trainer.py
    M("mt-projection-not-checkpointed", MT,
      "trackables[\"projection\"] = distiller.projection",
      "pass",
      "the feature projection left out of the checkpoint",
      (T_MDT,), "feature_teacher_adds or kill_and_rerun"),
    # ---------------------------------------------------------------- teachers/cache.py
    M("ca-weights-hash-ignored", CA,
      "_CHECKED = (\"teacher\", \"weights_hash\", \"preprocessing\", \"boxes_sha256\", \"quality\")",
      "_CHECKED = (\"teacher\", \"preprocessing\", \"boxes_sha256\", \"quality\")",
      "cache staleness check ignores the weights hash",
      (T_TC, T_WIRE), "stale or weights"),
    M("ca-image-hash-skipped", CA,
      "        if cached != now:\n",
      "        if False:\n",
      "cache: the per-image hash check skipped",
      (T_TC,), "changed_image"),
    M("ca-uncertainty-max", CA,
      "\"image_uncertainty\": out.image_uncertainty(),",
      "\"image_uncertainty\": float(np.max(out.uncertainties, initial=0.0)),",
      "cache stores the image σ² as the max over the boxes instead of the mean",
      (T_TC, T_WIRE), "cache_contents or mean_uncertainty"),
    # ---------------------------------------------------------------- train/loop.py
    M("lo-never-resumes", LO,
      "        if latest is None:\n            return 0\n",
      "        return 0\n",
      "the loop never resumes (restore returns 0)",
      (T_LOOP,), "resumes"),
    M("lo-best-not-saved", LO,
      "            if self.chief:\n                with atomic_path(self.best_weights_path) as tmp:",
      "            if False:\n                with atomic_path(self.best_weights_path) as tmp:",
      "the best epoch's weights never saved",
      (T_LOOP,), None),
    M("lo-min-epochs-ignored", LO,
      "\n              and epoch + 1 >= self.settings.min_epochs)",
      ")",
      "early stopping ignores min_epochs",
      (T_LOOP,), "early_stop"),
    M("lo-improved-mode-flipped", LO,
      "return value > best if self.settings.mode == \"max\" else value < best",
      "return value < best if self.settings.mode == \"max\" else value > best",
      "best-epoch selection with the monitor's direction reversed",
      (T_LOOP,), None),
    M("lo-history-not-cut", LO,
      "return table[table[\"epoch\"] <= done].to_dict(\"records\")",
      "return table.to_dict(\"records\")",
      "resume keeps history rows past the restored checkpoint",
      (T_LOOP, T_WIRE), "resume"),
    # ---------------------------------------------------------------- train/session.py, export.py
    M("se-load-best-skipped", SE,
      "    loop.load_best()\n    _write_worker_weights(session, model)\n",
      "    _write_worker_weights(session, model)\n",
      "finish_run exports the last epoch (load_best skipped)",
      (T_WIRE,), "finish_run_exports"),
    M("mt-load-best-skipped", MT,
      "    loop.load_best()\n    collapse = check_collapse(",
      "    collapse = check_collapse(",
      "MedDistill: the collapse check judges the last epoch (load_best skipped before it)",
      (T_LFS, T_WIRE), "exported_student_is_the_selected or collapse_check"),
    M("ex-probabilities-raw-logits", EX,
      "return 1.0 / (1.0 + np.exp(-logits[..., 0]))",
      "return logits[..., 0]",
      "prediction thresholds raw logits (no sigmoid)",
      (T_WIRE,), "probabilities"),
    M("ex-activation-wrong", EX,
      "return \"sigmoid\" if self.num_classes == 2 else \"softmax\"",
      "return \"sigmoid\" if self.num_classes == 1 else \"softmax\"",
      "model card: a binary model gets softmax",
      (T_WIRE,), "probabilities"),
    # ---------------------------------------------------------------- distill/recipes
    M("rc-per-replica-mean", RB,
      "return tf.nn.compute_average_loss(tf.cast(per_example, tf.float32),\n"
      "                                          global_batch_size=self.context.global_batch)",
      "return tf.reduce_mean(tf.cast(per_example, tf.float32))",
      "recipes: losses divided by the per-replica batch instead of the global one",
      (T_WIRE,), "recipe_average"),
    M("ck-teacher-not-pooled", CK,
      "student, teacher = taps.downsample(found[s], factor), taps.downsample(target[t], factor)",
      "student, teacher = taps.downsample(found[s], factor), target[t]",
      "CAKD/MSKD: the teacher's logits not pooled like the student's",
      (T_WIRE,), "cakd"),
    M("sc-mixed-labels-swapped", SC,
      "mixed[\"labels\"][view] = tf.concat([paste(pseudo[view], y_l, box), paste(y_l, pseudo[view], box)], axis=0)",
      "mixed[\"labels\"][view] = tf.concat([paste(y_l, pseudo[view], box), paste(pseudo[view], y_l, box)], axis=0)",
      "SSCD: the mixed images' labels swapped",
      (T_WIRE,), "sscd"),
]

PROBE = M("probe-import-copy", LF, "DICE_SMOOTH = 1.0\n", "DICE_SMOOTH = 1.0\nraise ImportError('mutant probe')\n",
          "probe: the copy's label_free.py fails at import (proves the tests import the copy)",
          (T_LF,), "dice_term")

# Survivors: why each is harmless, or which test now kills it (id -> note).
SURVIVOR_NOTES: dict[str, str] = {
    "mt-projection-not-checkpointed": (
        "harmless. Keras 3's optimizer tracks the variables it was built with "
        "(`optimizer/_trainable_variables/N`), and the trainer builds it with the projection's, so the "
        "projection's kernel and bias are saved and restored through the optimizer whether or not the "
        "checkpoint also names it: `tf.train.list_variables` of an unmutated feature-teacher run's checkpoint "
        "already lists them under `optimizer/` only (the mutant just drops a second path to the same "
        "variables). The projection would be lost only if it "
        "also left the optimiser's variables, which `ds-projection-not-optimised` shows the suite catches."),
}

# Mutants that survived the targeted tests of the existing suite (or, per issue 12, the whole
# suite) and are killed by a test written for this benchmark in tests/test_wiring_mutants.py.
NEWLY_KILLED: tuple[str, ...] = (
    "lf-projection-axis", "lf-raster-edge", "wt-ulwr-extra-terms-dropped", "ds-feature-detached",
    "ds-colearn-not-flipped", "ca-weights-hash-ignored", "ca-uncertainty-max", "lo-history-not-cut",
    "mt-load-best-skipped", "se-load-best-skipped", "ex-probabilities-raw-logits", "rc-per-replica-mean",
    "ck-teacher-not-pooled", "sc-mixed-labels-swapped")


@dataclass
class Result:
    id: str
    status: str  # killed / survived / timeout / not found / error
    seconds: float
    killed_by: str = ""
    source_hash: str = ""
    finished: str = ""
    tail: str = ""
    extra: dict = field(default_factory=dict)


def source_hash(mutant: Mutant, root: Path = REPO_ROOT) -> str:
    """Hash of the mutant's definition, the original file and its targeted test files."""
    digest = hashlib.sha256(json.dumps(asdict(mutant), sort_keys=True).encode())
    for rel in (mutant.file, *mutant.tests):
        path = root / rel
        digest.update(rel.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()[:16]


def tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO_ROOT, check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO_ROOT / f).is_file()]


def copy_tree(target: Path) -> int:
    """A fresh copy of the working tree's tracked (and new, unignored) files in ``target``."""
    if target.exists():
        shutil.rmtree(target)
    files = tree_files()
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest)
    return len(files)


def environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def check_import(tree: Path) -> str:
    """``medistill.__file__`` as the tests see it; raise unless it lies in the copy."""
    done = subprocess.run([str(PYTHON), "-c", "import medistill; print(medistill.__file__)"], cwd=tree,
                          env=environment(tree), capture_output=True, text=True, check=True)
    where = done.stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the copy's tests would import medistill from {where}, not from {tree}")
    return where


def failed_tests(output: str) -> str:
    """The first failing test named in pytest's output (``FAILED path::name`` / ``ERROR``)."""
    for line in output.splitlines():
        match = re.match(r"^(FAILED|ERROR) (\S+)", line.strip())
        if match:
            return match.group(2).split(" - ")[0]
    if "ImportError" in output or "error" in output.lower():
        return "collection error"
    return "?"


def run_mutant(mutant: Mutant, tree: Path, timeout: float) -> Result:
    path = tree / mutant.file
    original = path.read_text(encoding="utf-8")
    count = original.count(mutant.old)
    if count != 1:
        return Result(mutant.id, "not found", 0.0, tail=f"snippet occurs {count} times in {mutant.file}")
    for rel in mutant.tests:
        if not (tree / rel).is_file():
            return Result(mutant.id, "error", 0.0, tail=f"test file {rel} missing")
    path.write_text(original.replace(mutant.old, mutant.new, 1), encoding="utf-8")
    command = [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", 
               *mutant.pytest_args()]
    start = time.perf_counter()
    try:
        process = subprocess.Popen(command, cwd=tree, env=environment(tree), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            return Result(mutant.id, "timeout", time.perf_counter() - start, tail=output[-2000:])
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.perf_counter() - start
    code = process.returncode
    if code == 0:
        return Result(mutant.id, "survived", seconds, tail=output[-1500:])
    if code == 5:  # no test collected: the -k expression matches nothing
        return Result(mutant.id, "error", seconds, tail="no test selected\n" + output[-1500:])
    if code in (1, 2):
        return Result(mutant.id, "killed", seconds, killed_by=failed_tests(output), tail=output[-1500:])
    return Result(mutant.id, "error", seconds, tail=f"pytest exit {code}\n" + output[-1500:])


def load_results(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save_results(path: Path, results: dict[str, dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    rows, survivors = [], []
    counts = {"killed": 0, "survived": 0, "timeout": 0, "not found": 0, "error": 0, "not run": 0}
    for mutant in MUTANTS:
        found = results.get(mutant.id)
        stale = found is not None and found.get("source_hash") != source_hash(mutant)
        status = found["status"] if found else "not run"
        counts[status] = counts.get(status, 0) + 1
        if status == "survived":
            survivors.append(mutant)
        tests = " ".join(mutant.tests) + (f" -k '{mutant.k}'" if mutant.k else "")
        rows.append([f"`{mutant.id}`", f"`{mutant.file.removeprefix('medistill/')}`", mutant.description,
                     status + (" (stale)" if stale else ""),
                     f"`{found['killed_by']}`" if found and found.get("killed_by") else "–",
                     f"{found['seconds']:.0f}" if found else "–", f"`{tests}`"])
    valid = counts["killed"] + counts["survived"]
    score = f"{counts['killed']}/{valid} = {100 * counts['killed'] / valid:.0f} %" if valid else "–"
    body = [f"**Score: {score}** killed of the valid mutants run (killed + survived). "
            f"{len(MUTANTS)} mutants: {counts['killed']} killed, {counts['survived']} survived, "
            f"{counts['timeout']} timed out, {counts['not found']} stale (snippet not found), "
            f"{counts['error']} errors, {counts['not run']} not run yet.", "",
            markdown_table(["mutant", "file", "bug", "result", "killed by", "s", "targeted tests"], rows)]
    if survivors:
        body += ["", "Survivors:", ""]
        for mutant in survivors:
            body.append(f"- `{mutant.id}` ({mutant.description}): "
                        f"{SURVIVOR_NOTES.get(mutant.id, 'no test kills it yet: a gap in the suite')}")
    fixed = [m for m in NEWLY_KILLED if results.get(m, {}).get("status") == "killed"]
    if fixed:
        body += ["", "Survivors of the existing suite, now killed by a test of `tests/test_wiring_mutants.py` "
                     "(the test is in the table): " + ", ".join(f"`{m}`" for m in fixed) + "."]
    probe = results.get(PROBE.id)
    if probe:
        body += ["", f"Probe (`{PROBE.id}`, {PROBE.description}): {probe['status']} by "
                     f"`{probe['killed_by']}` on {probe['finished']}."]
    notes = ("Each mutant is one deliberate bug in a copy of the working tree; only its targeted tests run "
             "(`pytest -x`), with the copy's `medistill` on `PYTHONPATH`, so a mutant killed here is killed "
             "by the named test. Timeouts and stale snippets are not counted in the score. "
             f"Per-mutant timeout {args.timeout:.0f} s; run under `nice -n 10` beside other jobs, so the "
             "seconds are wall-clock on a busy 2-core machine.")
    publish(args, "mutants", "Mutation testing of the wiring (bench_mutants.py)", "\n".join(body), notes)


def main() -> None:
    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work folder (default {DEFAULT_WORK})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per mutant")
    parser.add_argument("--only", nargs="+", default=None, help="mutant ids to run (default all)")
    parser.add_argument("--rerun", nargs="+", default=[], help="mutant ids to run again even if recorded")
    parser.add_argument("--probe", action="store_true", help="run the probe mutant first")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--report-only", action="store_true", help="write the section from results.json")
    parser.add_argument("--deadline", default=None,
                        help="HH:MM (UTC): start no mutant after this time")
    args = parser.parse_args()

    ids = [m.id for m in MUTANTS]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate mutant ids")
    unknown = sorted((set(args.only or []) | set(args.rerun)) - set(ids))
    if unknown:
        raise SystemExit(f"unknown mutant id(s): {unknown}")
    if args.list:
        for m in MUTANTS:
            ok = (REPO_ROOT / m.file).read_text(encoding="utf-8").count(m.old)
            print(f"{m.id:34s} {m.file:45s} {'ok' if ok == 1 else f'SNIPPET x{ok}'}  {m.description}")
        return
    args.work.mkdir(parents=True, exist_ok=True)
    results_file = args.work / "results.json"
    results = load_results(results_file)
    if not args.report_only:
        tree = args.work / "tree"
        print(f"copied {copy_tree(tree)} files to {tree}", flush=True)
        print(f"medistill imported from {check_import(tree)}", flush=True)
        chosen = [m for m in MUTANTS if args.only is None or m.id in args.only]
        if args.probe:
            probe = run_mutant(PROBE, tree, args.timeout)
            print(f"probe: {probe.status} by {probe.killed_by} ({probe.seconds:.0f} s)", flush=True)
            probe.finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            results[PROBE.id] = asdict(probe)
            save_results(results_file, results)
            if probe.status != "killed":
                raise SystemExit(f"the probe mutant was not killed: the tests do not import the copy\n{probe.tail}")
        for mutant in chosen:
            if args.deadline:
                now = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M")
                if now >= args.deadline:
                    print(f"deadline {args.deadline} UTC reached: stopping", flush=True)
                    break
            digest = source_hash(mutant)
            done = results.get(mutant.id)
            if done and done.get("source_hash") == digest and mutant.id not in args.rerun \
                    and done["status"] in ("killed", "survived", "not found"):
                continue
            print(f"[{mutant.id}] {mutant.description} ...", flush=True)
            result = run_mutant(mutant, tree, args.timeout)
            result.source_hash = digest
            result.finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            results[mutant.id] = asdict(result)
            save_results(results_file, results)
            print(f"[{mutant.id}] {result.status} {result.killed_by} ({result.seconds:.0f} s)", flush=True)
            if result.status in ("error", "survived"):
                print(result.tail[-800:], flush=True)
    report(args, results)


if __name__ == "__main__":
    main()
