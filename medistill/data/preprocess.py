"""Turn raw images and masks into fixed-size network inputs, and map outputs back.

The recipe (recorded as :class:`PreprocessConfig` in every run folder and reapplied at
prediction time):

1. grey/RGB conversion to ``cfg.channels`` (ITU-R 601 luma, or grey replicated),
2. optional percentile clipping per image (CT/MRI outliers),
3. normalisation per image: ``"minmax"`` to [0, 1] or ``"zscore"`` (mean 0, std 1),
   computed over all pixels and channels together so colours keep their ratios,
4. the longest side resized to ``cfg.size`` (area when shrinking, bilinear when
   enlarging), zero padding at the bottom and right, as SAM does.

:class:`Geometry` records what step 4 did so that :func:`restore` can undo it.

Example::

    cfg = PreprocessConfig(size=256, clip_percentiles=(0.5, 99.5))
    x, geometry = preprocess_image(image, cfg)        # (256, 256, 1) float32
    y = preprocess_mask(mask, geometry)               # (256, 256) int32
    prob = restore(model_prob, geometry)              # original (H, W[, K])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

NORMALISATIONS = ("minmax", "zscore")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# cv2.resize (OpenCV 5) takes at most 4 channels with INTER_AREA and 128 otherwise;
# wider stacks (K-class probabilities) are resized in chunks.
_MAX_CV2_CHANNELS = 4


def _reject_unknown_keys(cls: type, data: dict[str, Any]) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{cls.__name__}: unknown key(s) {unknown}; expected only {sorted(known)}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become network inputs.

    Args:
        size: side of the square network input (pixels).
        channels: 1 (grey) or 3 (RGB) input channels.
        normalisation: ``"minmax"`` (to [0, 1]) or ``"zscore"`` (mean 0, std 1).
        clip_percentiles: ``(low, high)`` percentiles to clip each image to before
            normalising, e.g. ``(0.5, 99.5)`` for CT/MRI; ``None`` disables clipping.
    """

    size: int = 256
    channels: int = 1
    normalisation: str = "minmax"
    clip_percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.size) or self.size < 1:
            raise ValueError(f"PreprocessConfig.size must be a positive integer, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        if not _is_int(self.channels) or self.channels not in (1, 3):
            raise ValueError(f"PreprocessConfig.channels must be 1 or 3, got {self.channels!r}")
        object.__setattr__(self, "channels", int(self.channels))
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"PreprocessConfig.normalisation must be one of {list(NORMALISATIONS)}, "
                f"got {self.normalisation!r}"
            )
        if self.clip_percentiles is not None:
            object.__setattr__(self, "clip_percentiles", _checked_percentiles(self.clip_percentiles))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        data = asdict(self)
        if self.clip_percentiles is not None:
            data["clip_percentiles"] = list(self.clip_percentiles)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Read :meth:`to_dict` output; missing keys take defaults, unknown keys fail."""
        _reject_unknown_keys(cls, data)
        return cls(**data)


def _checked_percentiles(value: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"PreprocessConfig.clip_percentiles must be None or two numbers (low, high), "
            f"got {value!r}"
        ) from None
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(
            "PreprocessConfig.clip_percentiles must satisfy 0 <= low < high <= 100, "
            f"got {value!r}"
        )
    return (low, high)


@dataclass(frozen=True)
class Geometry:
    """Where an image went: original size, scale and the size before padding."""

    height: int
    width: int
    scale: float
    resized_height: int
    resized_width: int

    @classmethod
    def for_size(cls, height: int, width: int, size: int) -> Geometry:
        """The geometry of fitting an ``height`` x ``width`` image into ``size``.

        >>> Geometry.for_size(37, 91, 64)
        Geometry(height=37, width=91, scale=0.7032967032967034, resized_height=26, resized_width=64)
        """
        scale = size / max(height, width)
        return cls(
            height=int(height),
            width=int(width),
            scale=float(scale),
            resized_height=_scaled_length(height, scale),
            resized_width=_scaled_length(width, scale),
        )

    @property
    def padded_size(self) -> int:
        """Side of the padded square (the longest resized side)."""
        return max(self.resized_height, self.resized_width)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Read :meth:`to_dict` output; unknown keys fail."""
        _reject_unknown_keys(cls, data)
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            scale=float(data["scale"]),
            resized_height=int(data["resized_height"]),
            resized_width=int(data["resized_width"]),
        )


def _scaled_length(length: int, scale: float) -> int:
    # Round half up (not Python's banker's rounding) and never reach zero.
    return max(1, int(np.floor(length * scale + 0.5)))


def _resize(array: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    """cv2.resize that keeps a trailing channel axis of any length."""
    if array.shape[:2] == (height, width):
        return array.copy()
    if array.ndim == 2:
        return cv2.resize(array, (width, height), interpolation=interpolation)
    chunks = [
        cv2.resize(array[..., i : i + _MAX_CV2_CHANNELS], (width, height), interpolation=interpolation)
        for i in range(0, array.shape[2], _MAX_CV2_CHANNELS)
    ]
    # cv2 drops a channel axis of length 1.
    chunks = [c[..., None] if c.ndim == 2 else c for c in chunks]
    return np.concatenate(chunks, axis=2)


def _nearest_indices(source_length: int, target_length: int) -> np.ndarray:
    """Source index of each target pixel, pixel centres aligned (like the image resize)."""
    centres = (np.arange(target_length) + 0.5) * (source_length / target_length)
    return np.minimum(centres.astype(np.int64), source_length - 1)


def _resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = _nearest_indices(array.shape[0], height)
    cols = _nearest_indices(array.shape[1], width)
    return array[rows[:, None], cols[None, :]]


def _pad_bottom_right(array: np.ndarray, size: int) -> np.ndarray:
    pad = [(0, size - array.shape[0]), (0, size - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="constant", constant_values=0)


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an image of shape (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has an empty side: shape {image.shape}")
    image = image.astype(np.float64)
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values; replace them before preprocessing")
    return image


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """RGB → grey (ITU-R 601 luma) or grey → RGB (replicated); otherwise unchanged."""
    if image.shape[2] == channels:
        return image
    if channels == 1:
        return (image @ LUMA_WEIGHTS)[..., None]
    return np.repeat(image, channels, axis=2)


def normalise(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Percentile clipping and normalisation over the whole image (all channels).

    A constant image becomes zeros under either normalisation (never NaN).

    >>> normalise(np.array([[[1.0], [3.0]]]), PreprocessConfig()).ravel().tolist()
    [0.0, 1.0]
    """
    image = np.asarray(image, dtype=np.float64)
    if cfg.clip_percentiles is not None:
        low, high = np.percentile(image, cfg.clip_percentiles)
        image = np.clip(image, low, high)
    if cfg.normalisation == "minmax":
        low, high = image.min(), image.max()
        if high <= low:
            return np.zeros_like(image)
        return (image - low) / (high - low)
    mean, std = image.mean(), image.std()
    if not std > 0:
        return np.zeros_like(image)
    return (image - mean) / std


def preprocess_image(image: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
    """Raw ``(H, W, C)`` image → ``(size, size, channels)`` float32 input and its geometry.

    Example::

        x, geometry = preprocess_image(np.zeros((37, 91, 3), np.float32), PreprocessConfig(size=64))
        x.shape  # (64, 64, 1); geometry.resized_height == 26, resized_width == 64
    """
    pixels = _as_image(image)
    pixels = convert_channels(pixels, cfg.channels)
    pixels = normalise(pixels, cfg).astype(np.float32)
    geometry = Geometry.for_size(pixels.shape[0], pixels.shape[1], cfg.size)
    shrinking = geometry.scale < 1.0
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = _resize(pixels, geometry.resized_height, geometry.resized_width, interpolation)
    return _pad_bottom_right(resized, cfg.size).astype(np.float32), geometry


def preprocess_mask(mask: np.ndarray, geometry: Geometry, size: int | None = None) -> np.ndarray:
    """``(H, W)`` label map → ``(size, size)`` int32, nearest neighbour, padding = 0.

    ``size`` defaults to the geometry's padded size, which equals the config's size.
    """
    mask = np.asarray(mask)
    if mask.shape != (geometry.height, geometry.width):
        raise ValueError(
            f"mask shape {mask.shape} does not match its image "
            f"({geometry.height}, {geometry.width})"
        )
    size = geometry.padded_size if size is None else int(size)
    if size < geometry.padded_size:
        raise ValueError(f"size {size} is smaller than the resized mask {geometry.padded_size}")
    resized = _resize_nearest(mask, geometry.resized_height, geometry.resized_width)
    return _pad_bottom_right(resized.astype(np.int32), size)


def _crop_unpadded(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an (S, S) or (S, S, K) map, got shape {array.shape}")
    if array.shape[0] < geometry.resized_height or array.shape[1] < geometry.resized_width:
        raise ValueError(
            f"map of shape {array.shape} is smaller than the resized image "
            f"({geometry.resized_height}, {geometry.resized_width})"
        )
    return array[: geometry.resized_height, : geometry.resized_width]


def restore(prob: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Network-size probabilities → original size: crop the padding, bilinear resize.

    ``(S, S)`` gives ``(H, W)``; ``(S, S, K)`` gives ``(H, W, K)`` (also for K = 1).
    Values are clipped to [0, 1].
    """
    cropped = _crop_unpadded(prob, geometry).astype(np.float32)
    restored = _resize(cropped, geometry.height, geometry.width, cv2.INTER_LINEAR)
    return np.clip(restored, 0.0, 1.0).astype(np.float32)


def restore_labels(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Network-size label map ``(S, S)`` → original ``(H, W)``, nearest neighbour."""
    cropped = _crop_unpadded(labels, geometry)
    return _resize_nearest(cropped, geometry.height, geometry.width)
