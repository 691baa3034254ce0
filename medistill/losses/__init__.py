"""Losses as plain functions on tensors, usable outside any trainer."""

from medistill.losses.segmentation import (
    bce_dice_loss,
    ce_dice_loss,
    hard_dice_per_example,
    predicted_labels,
    segmentation_loss,
    soft_dice_per_example,
)

__all__ = [
    "bce_dice_loss",
    "ce_dice_loss",
    "hard_dice_per_example",
    "predicted_labels",
    "segmentation_loss",
    "soft_dice_per_example",
]
