"""Random augmentation of one preprocessed (image, mask) pair, as TensorFlow ops.

Representation: the image is ``(S, S, C)`` float32 and the mask an ``(S, S)`` int32
label map (the same as :func:`medistill.data.preprocess.preprocess_mask` gives and the
data set yields). Geometric changes move both identically; the mask is always moved
by nearest neighbour so its labels stay labels. Intensity changes touch the image only.

Every random choice comes from stateless ops keyed by a per-element ``seed`` (shape
``(2,)``, int32/int64), so the same seed always gives the same result.

Example::

    cfg = AugmentConfig(max_rotation_degrees=10.0)
    image, mask = augment_pair(image, mask, tf.constant([1, 2], tf.int64), cfg)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import tensorflow as tf

# Sub-seed slots; fixed so that switching one augmentation off does not change the
# random draws of the others.
_FLIP_LR, _FLIP_UD, _ROT90, _AFFINE_APPLY, _ANGLE, _SCALE, _GAMMA, _CONTRAST, _BRIGHTNESS = range(9)
_NUM_SUBSEEDS = 9


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run, and how strong they are.

    Args:
        flip_horizontal / flip_vertical: random left-right / up-down flips (p = 0.5).
        rotate90: random multiple of 90° (square inputs only).
        max_rotation_degrees: small rotation drawn from ±this; 0 disables.
        scale_range: zoom factor drawn from ``(low, high)``; ``(1, 1)`` disables.
        affine_probability: chance that the rotation/scale transform runs for a pair
            (it resamples the image bilinearly, which blurs slightly).
        brightness: additive shift drawn from ±this; 0 disables.
        contrast: factor drawn from ``1 ± this`` around the per-channel mean; 0 disables.
        gamma: exponent drawn log-uniformly from ``[1/(1+gamma), 1+gamma]``, applied to
            the image's own [min, max] range (so z-scored inputs work); 0 disables.
    """

    flip_horizontal: bool = True
    flip_vertical: bool = True
    rotate90: bool = True
    max_rotation_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    affine_probability: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.2

    def __post_init__(self) -> None:
        for name in ("flip_horizontal", "flip_vertical", "rotate90"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"AugmentConfig.{name} must be true or false, got {getattr(self, name)!r}")
        self._check_range("max_rotation_degrees", 0.0, 180.0)
        self._check_range("affine_probability", 0.0, 1.0)
        self._check_range("brightness", 0.0, math.inf)
        self._check_range("contrast", 0.0, 1.0, high_open=True)
        self._check_range("gamma", 0.0, math.inf)
        try:
            low, high = (float(v) for v in self.scale_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"AugmentConfig.scale_range must be two numbers (low, high), got {self.scale_range!r}"
            ) from None
        if not 0.0 < low <= high:
            raise ValueError(f"AugmentConfig.scale_range must satisfy 0 < low <= high, got {self.scale_range!r}")
        object.__setattr__(self, "scale_range", (low, high))

    def _check_range(self, name: str, low: float, high: float, high_open: bool = False) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"AugmentConfig.{name} must be a number, got {value!r}")
        above = value >= high if high_open else value > high
        if value < low or above:
            bracket = ")" if high_open else "]"
            raise ValueError(f"AugmentConfig.{name} must be in [{low}, {high}{bracket}, got {value!r}")
        object.__setattr__(self, name, float(value))

    @property
    def uses_affine(self) -> bool:
        """Whether the rotation/scale transform can run at all."""
        no_change = self.max_rotation_degrees == 0.0 and self.scale_range == (1.0, 1.0)
        return self.affine_probability > 0.0 and not no_change

    @classmethod
    def geometry_only(cls, **overrides: Any) -> AugmentConfig:
        """A config with every intensity change off."""
        return cls(**{"brightness": 0.0, "contrast": 0.0, "gamma": 0.0, **overrides})

    @classmethod
    def intensity_only(cls, **overrides: Any) -> AugmentConfig:
        """A config with every geometric change off."""
        off = {
            "flip_horizontal": False,
            "flip_vertical": False,
            "rotate90": False,
            "max_rotation_degrees": 0.0,
            "scale_range": (1.0, 1.0),
        }
        return cls(**{**off, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        data = asdict(self)
        data["scale_range"] = list(self.scale_range)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Read :meth:`to_dict` output; missing keys take defaults, unknown keys fail."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"AugmentConfig: unknown key(s) {unknown}; expected only {sorted(known)}")
        return cls(**data)


def _coin(seed: tf.Tensor, probability: float = 0.5) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < probability


def _uniform(seed: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high)


def _flip(image: tf.Tensor, mask: tf.Tensor, axis: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cond(
        _coin(seed),
        lambda: (tf.reverse(image, [axis]), tf.reverse(mask, [axis])),
        lambda: (image, mask),
    )


def _rotate90(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    turns = tf.random.stateless_uniform([], seed, minval=0, maxval=4, dtype=tf.int32)
    rotated_image = tf.image.rot90(image, turns)
    rotated_mask = tf.image.rot90(mask[..., None], turns)[..., 0]
    return rotated_image, rotated_mask


def affine_matrix(angle: tf.Tensor, scale: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """The 8 projective-transform coefficients of rotating by ``angle`` (radians) and
    zooming by ``scale`` about the image centre.

    The coefficients map an output pixel (x, y) to the input pixel it samples, which
    is the inverse of the zoom/rotation, as ``ImageProjectiveTransformV3`` expects.
    """
    cos = tf.math.cos(angle) / scale
    sin = tf.math.sin(angle) / scale
    centre_x = (tf.cast(width, tf.float32) - 1.0) / 2.0
    centre_y = (tf.cast(height, tf.float32) - 1.0) / 2.0
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = centre_x - (a0 * centre_x + a1 * centre_y)
    b2 = centre_y - (b0 * centre_x + b1 * centre_y)
    zero = tf.zeros_like(cos)
    return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero])


def _transform(image: tf.Tensor, coefficients: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Resample one (H, W, C) float image; pixels from outside become 0."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=coefficients[None],
        output_shape=tf.shape(image)[:2],
        fill_value=tf.constant(0.0, tf.float32),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )[0]


def _rotate_and_scale(
    image: tf.Tensor, mask: tf.Tensor, seeds: tf.Tensor, cfg: AugmentConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    max_angle = math.radians(cfg.max_rotation_degrees)
    angle = _uniform(seeds[_ANGLE], -max_angle, max_angle) if max_angle > 0 else tf.constant(0.0)
    low, high = cfg.scale_range
    scale = _uniform(seeds[_SCALE], low, high) if high > low else tf.constant(low)
    shape = tf.shape(image)
    coefficients = affine_matrix(angle, scale, shape[0], shape[1])

    def transformed() -> tuple[tf.Tensor, tf.Tensor]:
        moved_image = _transform(image, coefficients, "BILINEAR")
        moved_mask = _transform(tf.cast(mask, tf.float32)[..., None], coefficients, "NEAREST")
        return moved_image, tf.cast(tf.round(moved_mask[..., 0]), tf.int32)

    return tf.cond(_coin(seeds[_AFFINE_APPLY], cfg.affine_probability), transformed, lambda: (image, mask))


def random_geometry(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """Flips, 90° turns and a small rotation/zoom applied identically to both."""
    height, width = image.shape[0], image.shape[1]
    if cfg.rotate90 and height is not None and width is not None and height != width:
        raise ValueError(f"rotate90 needs square images, got {height}x{width}")
    seeds = tf.random.experimental.stateless_split(seed, num=_NUM_SUBSEEDS)
    if cfg.flip_horizontal:
        image, mask = _flip(image, mask, 1, seeds[_FLIP_LR])
    if cfg.flip_vertical:
        image, mask = _flip(image, mask, 0, seeds[_FLIP_UD])
    if cfg.rotate90:
        image, mask = _rotate90(image, mask, seeds[_ROT90])
    if cfg.uses_affine:
        image, mask = _rotate_and_scale(image, mask, seeds, cfg)
    return image, mask


def random_intensity(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Gamma, contrast and brightness jitter of one ``(S, S, C)`` image."""
    seeds = tf.random.experimental.stateless_split(seed, num=_NUM_SUBSEEDS)
    if cfg.gamma > 0:
        log_max = math.log1p(cfg.gamma)
        gamma = tf.exp(_uniform(seeds[_GAMMA], -log_max, log_max))
        low, high = tf.reduce_min(image), tf.reduce_max(image)
        spread = high - low
        unit = (image - low) / tf.where(spread > 0, spread, 1.0)
        image = tf.where(spread > 0, low + spread * tf.pow(unit, gamma), image)
    if cfg.contrast > 0:
        factor = _uniform(seeds[_CONTRAST], 1.0 - cfg.contrast, 1.0 + cfg.contrast)
        mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
        image = (image - mean) * factor + mean
    if cfg.brightness > 0:
        image = image + _uniform(seeds[_BRIGHTNESS], -cfg.brightness, cfg.brightness)
    return image


def augment_pair(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """Augment one ``(S, S, C)`` float32 image and its ``(S, S)`` int32 label map.

    Static shapes are kept, so this can run inside ``tf.data.Dataset.map``.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    mask = tf.convert_to_tensor(mask, tf.int32)
    seed = tf.convert_to_tensor(seed)
    geometry_seed, intensity_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    image_shape, mask_shape = image.shape, mask.shape
    image, mask = random_geometry(image, mask, geometry_seed, cfg)
    image = random_intensity(image, intensity_seed, cfg)
    image.set_shape(image_shape)
    mask.set_shape(mask_shape)
    return image, mask
