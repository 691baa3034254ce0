"""Data layer: readers, pairing and validation (docs/DESIGN.md, "Samples and data sets")."""

from medistill.data.io import (
    IMAGE_EXTENSIONS,
    read_image,
    read_mask,
    read_volume,
    volume_slice,
    write_image_png,
    write_mask_png,
)
from medistill.data.samples import Sample, find_splits, load_sample, pair_folder
from medistill.data.preprocess import (
    Geometry,
    PreprocessConfig,
    preprocess_image,
    preprocess_mask,
    restore,
    restore_labels,
)
from medistill.data.validation import validate_samples

__all__ = [
    "AugmentConfig",
    "Geometry",
    "PreprocessConfig",
    "augment_pair",
    "epoch_datasets",
    "make_dataset",
    "make_image_dataset",
    "preprocess_image",
    "preprocess_mask",
    "restore",
    "restore_labels",
    "IMAGE_EXTENSIONS",
    "Sample",
    "find_splits",
    "load_sample",
    "pair_folder",
    "read_image",
    "read_mask",
    "read_volume",
    "validate_samples",
    "volume_slice",
    "write_image_png",
    "write_mask_png",
]

# Names that need TensorFlow load on first use, so that reading and validating data
# does not pay for importing it.
_TENSORFLOW_NAMES = {
    "AugmentConfig": "medistill.data.augment",
    "augment_pair": "medistill.data.augment",
    "epoch_datasets": "medistill.data.pipeline",
    "make_dataset": "medistill.data.pipeline",
    "make_image_dataset": "medistill.data.pipeline",
}


def __getattr__(name: str):
    if name in _TENSORFLOW_NAMES:
        import importlib

        return getattr(importlib.import_module(_TENSORFLOW_NAMES[name]), name)
    raise AttributeError(f"module 'medistill.data' has no attribute {name!r}")
