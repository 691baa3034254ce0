"""Student segmentation networks: U-Net, UNet++ and a 2-D LCOV-Net.

Every student maps ``(B, S, S, C)`` float32 images to logits ``(B, S, S, num_classes)``
at input resolution (``num_classes=1``: one sigmoid logit) and names its intermediate
layers ``enc1``…, ``bottleneck``, ``dec1``…, ``penultimate`` and, with
``deep_supervision=True``, ``aux1``… (see docs/DESIGN.md, "Students").

Example:

>>> import numpy as np
>>> from medistill.networks import build_student, feature_model, model_summary
>>> model = build_student("unetpp", in_channels=1, num_classes=1, filters=(4, 8, 16))
>>> features = feature_model(model, ["bottleneck", "penultimate"])
>>> sorted(features(np.zeros((1, 16, 16, 1), "float32")))
['bottleneck', 'logits', 'penultimate']
>>> model_summary(model, (16, 16, 1))["params"] == model.count_params()
True
"""

from medistill.networks.blocks import (
    AnchorAuxiliary,
    BilinearUpsample,
    ConvBNAct,
    DoubleConv,
    LogitHead,
    UpsampleConcat,
)
from medistill.networks.features import feature_model, feature_names, head_names
from medistill.networks.lcovnet import LACBHigh, LACBLow, build_lcovnet
from medistill.networks.registry import (
    STUDENTS,
    StudentError,
    build_student,
    check_student_options,
    student_options,
    student_stride,
)
from medistill.networks.summary import count_flops, model_summary
from medistill.networks.unet import build_unet
from medistill.networks.unetpp import build_unetpp

__all__ = [
    "STUDENTS",
    "AnchorAuxiliary",
    "BilinearUpsample",
    "ConvBNAct",
    "DoubleConv",
    "LACBHigh",
    "LACBLow",
    "LogitHead",
    "StudentError",
    "UpsampleConcat",
    "build_lcovnet",
    "build_student",
    "build_unet",
    "build_unetpp",
    "check_student_options",
    "count_flops",
    "feature_model",
    "feature_names",
    "head_names",
    "model_summary",
    "student_options",
    "student_stride",
]
