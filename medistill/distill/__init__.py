"""Distillation: the shared core every recipe runs on, and the recipes themselves.

* :mod:`medistill.distill.session` — one run: strategy, run folder, logs, export;
* :mod:`medistill.distill.precision` — optional mixed precision and loss scaling;
* :mod:`medistill.distill.weighting`, :mod:`~medistill.distill.projection`,
  :mod:`~medistill.distill.colearn` — MedDistill's loss weighting (ULWR, learned,
  fixed), the learned 1×1 projection of a student feature to the teacher's channels,
  and co-learning of LiteMedSAM's mask decoder jointly with the student;
* :mod:`medistill.distill.meddistill` — the unsupervised foundation → student trainer;
* :mod:`medistill.distill.recipes` — KAMSD, CAKD+MSKD, SIKD and SSCD.

The losses themselves live in :mod:`medistill.losses`, usable without any trainer.
"""
