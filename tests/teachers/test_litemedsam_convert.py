"""Checkpoint mapping on a tiny LiteMedSAM: round trip, and loud failures naming the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from medistill.errors import CheckpointError
from medistill.teachers.litemedsam.convert import (
    _TRANSFORMS,
    assign_state_dict,
    convert_checkpoint,
    weight_entries,
)
from medistill.teachers.litemedsam.model import LiteMedSAM

TINY = {"image_size": 64, "embed_dims": [8, 16, 24, 320], "depths": [1, 1, 1, 1],
        "num_heads": [1, 2, 2, 10], "window_sizes": [7, 7, 7, 7], "embed_dim": 32,
        "mask_in_chans": 8, "decoder_heads": 2, "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32}
_INVERSE = {"same": lambda a: a, "linear": lambda a: a.T, "conv": lambda a: a.transpose(3, 2, 0, 1),
            "depthwise": lambda a: a.transpose(2, 3, 0, 1), "conv_transpose": lambda a: a.transpose(3, 2, 0, 1)}


def _tiny_model() -> LiteMedSAM:
    model = LiteMedSAM(TINY)
    model.build()
    return model


def _state_of(model: LiteMedSAM, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for name, variable, kind in weight_entries(model):
        value = rng.normal(size=tuple(variable.shape)).astype(np.float32)
        if name.endswith("running_var"):
            value = np.abs(value) + 0.5
        state[name] = _INVERSE[kind](value)
        np.testing.assert_array_equal(_TRANSFORMS[kind](state[name]), value)
    return state


def test_round_trip_assigns_every_variable():
    model = _tiny_model()
    state = _state_of(model)
    state["image_encoder.patch_embed.seq.0.bn.num_batches_tracked"] = np.array(3)  # ignored
    assign_state_dict(model, state)
    mapped = {id(v) for _, v, _ in weight_entries(model)}
    assert mapped == {id(v) for v in model.weights}  # nothing left unmapped
    for name, variable, kind in weight_entries(model):
        np.testing.assert_array_equal(np.asarray(variable), _TRANSFORMS[kind](state[name]))
    out = model({"images": np.zeros((1, 64, 64, 3), np.float32),
                 "boxes": np.array([[4.0, 4, 40, 40]], np.float32)})
    assert tuple(out["masks"].shape) == (1, 1, 64, 64) and tuple(out["embedding"].shape) == (1, 16, 16, 32)


@pytest.mark.parametrize("damage, message", [
    ("drop", "missing tensor mask_decoder.iou_token.weight"),
    ("extra", "unexpected tensor mask_decoder.extra.weight"),
    ("shape", "tensor mask_decoder.iou_token.weight has shape"),
])
def test_mismatches_are_named(damage, message):
    model = _tiny_model()
    state = _state_of(model)
    if damage == "drop":
        del state["mask_decoder.iou_token.weight"]
    elif damage == "extra":
        state["mask_decoder.extra.weight"] = np.zeros(3, np.float32)
    else:
        state["mask_decoder.iou_token.weight"] = np.zeros((2, 32), np.float32)
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.")):
        assign_state_dict(model, state, source="my.pth")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="absent.pth"):
        convert_checkpoint(tmp_path / "absent.pth", cache_dir=tmp_path / "cache")
