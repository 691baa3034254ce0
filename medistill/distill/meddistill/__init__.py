"""MedDistill (docs/methods.md §1): a student distilled from a box-prompted foundation model, no labels.

Modules: ``config`` (:class:`MedDistillConfig`, saved as ``config.json``), ``data``
(teacher cache and images in the student frame, the tf.data pipeline), ``trainer``
(the distiller, its step under ``tf.distribute``, :func:`train_meddistill`), ``plots``
(the PNG of loss terms and weights). ``meddistill.py`` / ``python -m medistill
meddistill`` is the command line.

Example::

    from medistill.distill.meddistill import MedDistillConfig, train_meddistill
    train_meddistill(MedDistillConfig(image_dir="data/images", boxes="boxes.json", out="runs/md"))
"""

from medistill.distill.meddistill.config import MedDistillConfig


def train_meddistill(*args, **kwargs):
    """:func:`medistill.distill.meddistill.trainer.train_meddistill` (imports TensorFlow on call)."""
    from medistill.distill.meddistill.trainer import train_meddistill as train

    return train(*args, **kwargs)


__all__ = ["MedDistillConfig", "train_meddistill"]
