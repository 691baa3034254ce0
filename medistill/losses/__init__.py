"""Losses as plain functions on tensors, usable outside any trainer.

The methods they implement, and where they depart from them: docs/methods.md.

* ``segmentation`` — supervised BCE/CE + Dice;
* ``distillation`` — MedDistill's label-free terms (soft-mask BCE and MSE, features, agreement);
* ``kamsd``, ``cakd``, ``mskd``, ``sikd``, ``boundaries`` — the supervised recipes;
* ``sscd`` — the semi-supervised curriculum's pseudo labels and losses.
"""

from medistill.losses.boundaries import boundary_map
from medistill.losses.cakd import cakd_loss_per_example, class_affinity
from medistill.losses.distillation import (
    agreement_dice_per_example,
    feature_cosine_per_example,
    feature_mse_per_example,
    prob_mse_per_example,
    soft_bce_per_example,
)
from medistill.losses.kamsd import (
    FeatureAdapter,
    adapter_feature_loss_per_example,
    boundary_loss_per_example,
    deep_supervision_loss_per_example,
    temperature_distillation_per_example,
)
from medistill.losses.mskd import lcov_total_per_example, mskd_loss_per_example, norm_temperature
from medistill.losses.segmentation import (
    bce_dice_loss,
    ce_dice_loss,
    hard_dice_per_example,
    predicted_labels,
    segmentation_loss,
    soft_dice_per_example,
)
from medistill.losses.sikd import classwise_average, sikd_loss_per_example
from medistill.losses.sscd import (
    curriculum_weights,
    entropy_hard_mask,
    pseudo_variance,
    pv_gated_pseudo_labels,
    sscd_model_loss_per_example,
)

__all__ = [
    "FeatureAdapter",
    "adapter_feature_loss_per_example",
    "agreement_dice_per_example",
    "bce_dice_loss",
    "boundary_loss_per_example",
    "boundary_map",
    "cakd_loss_per_example",
    "ce_dice_loss",
    "class_affinity",
    "classwise_average",
    "curriculum_weights",
    "deep_supervision_loss_per_example",
    "entropy_hard_mask",
    "feature_cosine_per_example",
    "feature_mse_per_example",
    "hard_dice_per_example",
    "lcov_total_per_example",
    "mskd_loss_per_example",
    "norm_temperature",
    "predicted_labels",
    "prob_mse_per_example",
    "pseudo_variance",
    "pv_gated_pseudo_labels",
    "segmentation_loss",
    "sikd_loss_per_example",
    "soft_bce_per_example",
    "soft_dice_per_example",
    "sscd_model_loss_per_example",
    "temperature_distillation_per_example",
]
