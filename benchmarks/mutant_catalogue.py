"""The mutants of bench_mutants.py (issue 12): each a one-line bug and the tests that should kill it.

:data:`MUTANTS` is the explicit list (one :class:`Mutant` per deliberate bug: an exact
snippet of one file, its replacement, a description and the targeted tests), :data:`PROBE`
the mutant that proves the tests import the copied tree, :data:`SURVIVOR_NOTES` why a
survivor is harmless, :data:`NEWLY_KILLED` the survivors that tests/test_wiring_mutants.py
now kills.
"""

from __future__ import annotations

from dataclasses import dataclass


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
ME = "medistill/train/method.py"
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
      "self._trackables[\"projection\"] = self.distiller.projection",
      "pass",
      "the feature projection left out of the checkpoint",
      (T_MDT,), "feature_teacher_adds or kill_and_rerun"),
    # ---------------------------------------------------------------- teachers/cache.py
    M("ca-weights-hash-ignored", CA,
      "_CHECKED = (\"teacher\", \"weights_hash\", \"precision\", \"preprocessing\", \"boxes_sha256\", \"quality\", \"shard\")",
      "_CHECKED = (\"teacher\", \"precision\", \"preprocessing\", \"boxes_sha256\", \"quality\", \"shard\")",
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
    M("mt-load-best-skipped", ME,
      "    loop.load_best()\n    method.after_fit(",
      "    method.after_fit(",
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
