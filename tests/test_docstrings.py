"""The examples in the package's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "medistill.boxes.boxes_file",
    "medistill.boxes.components",
    "medistill.boxes.metrics",
    "medistill.boxes.oracle",
    "medistill.boxes.scoring",
    "medistill.boxes.yolo_labels",
    "medistill.boxes.yolo_splits",
    "medistill.cli.options",
    "medistill.distill.config",
    "medistill.distill.meddistill.config",
    "medistill.distill.meddistill.frames",
    "medistill.distill.meddistill.prompts",
    "medistill.train.loop",
    "medistill.distill.meddistill.trust",
    "medistill.distill.projection",
    "medistill.distill.recipes",
    "medistill.distill.recipes.taps",
    "medistill.distill.weighting",
    "medistill.losses.boundaries",
    "medistill.losses.cakd",
    "medistill.losses.distillation",
    "medistill.losses.kamsd",
    "medistill.losses.label_free",
    "medistill.losses.mskd",
    "medistill.losses.sikd",
    "medistill.losses.sscd",
    "medistill.networks",
    "medistill.networks.blocks",
    "medistill.networks.features",
    "medistill.networks.lcovnet",
    "medistill.networks.registry",
    "medistill.networks.summary",
    "medistill.networks.unet",
    "medistill.networks.unetpp",
    "medistill.predict.postprocess",
    "medistill.teachers.shards",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
