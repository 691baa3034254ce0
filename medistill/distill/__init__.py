"""Distillation: the shared core every recipe runs on, and the recipes themselves.

* the run itself (strategy, run folder, logs, export, mixed precision) is
  :mod:`medistill.train.session` and :mod:`medistill.train.precision`, shared with the
  supervised trainer;
* :mod:`medistill.distill.weighting`, :mod:`~medistill.distill.projection`,
  :mod:`~medistill.distill.colearn` — MedDistill's loss weighting (ULWR, learned,
  fixed), the learned 1×1 projection of a student feature to the teacher's channels,
  and co-learning of LiteMedSAM's mask decoder jointly with the student;
* :mod:`medistill.distill.meddistill` — the unsupervised foundation → student trainer;
* :mod:`medistill.distill.recipes` — KAMSD, CAKD+MSKD, SIKD and SSCD.

The losses themselves live in :mod:`medistill.losses`, usable without any trainer.
"""
