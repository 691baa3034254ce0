"""How a teacher cache stores the large arrays: ``full`` or ``compact`` (the default).

The encoder features dominate a cache (LiteMedSAM: 64×64×256 float16, about 2 MB an
image). What a student uses of them is smaller: MedDistill resizes the teacher's map to
the grid of the student layer it distils into (area averaging), 32×32 for a stride-4
layer at 128 px and 16×16 at 64 px. ``compact`` storage keeps exactly that information
for students up to 128 px and little more:

* features: 2×2 area-averaged (64×64 → 32×32; a map with an odd side is not pooled), then
  quantised per channel to 8 bits, ``q = round(255 · (x − lo_c) / (hi_c − lo_c))``, with
  ``lo_c``/``hi_c`` the channel's minimum and maximum in this image (stored, float32).
  The decoded value is within ``(hi_c − lo_c) / 510`` of the pooled one. ``feature_stride``
  stays the encoder's stride (it says which student layer matches the teacher's level;
  the pooled map is a coarser copy of that level), and ``feature_pool`` records the 2.
* per-box masks: probabilities in 8 bits (``round(255 · p)``), the fused soft mask in
  float16: the training target keeps about three decimals.

``full`` keeps everything as computed (features float16 64×64, masks float32): needed by
``--co-learn``, which feeds the cached embedding to the teacher's own decoder, and by
students of more than 128 px that want the teacher's full resolution. A ``full`` cache
serves a ``compact`` request (it holds more); the reverse is refused.

Example:
    >>> import numpy as np
    >>> features = np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float16)
    >>> stored = encode_features(features, "compact")
    >>> stored["features"].dtype.name, stored["features"].shape
    ('uint8', (2, 2, 3))
    >>> pooled = features.astype(np.float32).reshape(2, 2, 2, 2, 3).mean(axis=(1, 3))
    >>> step = (stored["features_high"] - stored["features_low"]) / 510
    >>> bool(np.all(np.abs(decode_features(stored) - pooled) <= step + 1e-6))
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

STORAGES = ("compact", "full")
DEFAULT_STORAGE = "compact"
UNRECORDED_STORAGE = "full"  # caches written before the storage attribute existed
POOL = 2


def check_storage(storage: str) -> str:
    """``storage`` if it is one of :data:`STORAGES`; ValueError naming them otherwise."""
    if storage not in STORAGES:
        raise ValueError(f"cache feature storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    return storage


def serves(stored: str, wanted: str) -> bool:
    """Whether a cache of ``stored`` storage can be used where ``wanted`` is asked (full serves compact)."""
    return stored == wanted or (stored == "full" and wanted == "compact")


def _pool(features: np.ndarray) -> tuple[np.ndarray, int]:
    height, width, channels = features.shape
    if height % POOL or width % POOL:
        return features, 1
    pooled = features.reshape(height // POOL, POOL, width // POOL, POOL, channels).mean(axis=(1, 3))
    return pooled, POOL


def encode_features(features: np.ndarray, storage: str) -> dict[str, Any]:
    """The datasets (and the ``feature_pool`` attribute) that store ``features`` ``(h, w, C)``."""
    if check_storage(storage) == "full":
        return {"features": np.asarray(features, np.float16), "feature_pool": 1}
    pooled, pool = _pool(np.asarray(features, np.float32))
    low = pooled.min(axis=(0, 1))
    high = pooled.max(axis=(0, 1))
    span = np.where(high > low, high - low, 1.0)
    quantised = np.rint((pooled - low) / span * 255.0).clip(0, 255).astype(np.uint8)
    return {"features": quantised, "features_low": low.astype(np.float32),
            "features_high": high.astype(np.float32), "feature_pool": pool}


def decode_features(stored: Any) -> np.ndarray:
    """Features ``(h, w, C)`` (float32; float16 for full storage) from what :func:`encode_features` wrote (a dict or an HDF5 group)."""
    values = np.asarray(stored["features"][()])
    if values.dtype != np.uint8:  # full storage: the float16 features as computed
        return values
    low = np.asarray(stored["features_low"][()], np.float32)
    high = np.asarray(stored["features_high"][()], np.float32)
    return low + values.astype(np.float32) * ((high - low) / 255.0)


def encode_masks(masks: np.ndarray, storage: str) -> np.ndarray:
    """Per-box probabilities ``(N, H, W)`` as stored: float32 (full) or 8-bit (compact)."""
    if check_storage(storage) == "full":
        return np.asarray(masks, np.float32)
    return np.rint(np.clip(masks, 0.0, 1.0) * 255.0).astype(np.uint8)


def decode_masks(values: np.ndarray) -> np.ndarray:
    """Stored per-box masks back to float32 probabilities."""
    values = np.asarray(values)
    return values.astype(np.float32) / 255.0 if values.dtype == np.uint8 else values.astype(np.float32)


def encode_fused(fused: np.ndarray, storage: str) -> np.ndarray:
    """The fused soft mask as stored: float32 (full) or float16 (compact)."""
    return np.asarray(fused, np.float32 if check_storage(storage) == "full" else np.float16)
