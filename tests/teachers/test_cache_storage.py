"""Compact and full teacher caches: what is stored, how close compact is, which serves which."""

from __future__ import annotations

import importlib.util

import h5py
import numpy as np
import pytest

from medistill.distill.meddistill.frames import features_to_grid
from medistill.errors import MedistillError
from medistill.teachers.cache import CacheReader, build_cache
from medistill.teachers.cache_storage import decode_features, encode_features
from medistill.teachers.registry import build_teacher

pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None, reason="keras-hub is not installed")


@pytest.fixture()
def two_caches(phantom_set, tmp_path):
    """The same tiny-sam teacher outputs stored full and compact."""
    image_dir, boxes_path, boxes = phantom_set(4, 64, seed=3)
    teacher = build_teacher("tiny-sam")
    paths = {}
    for storage in ("full", "compact"):
        paths[storage] = tmp_path / f"{storage}.h5"
        build_cache(teacher, image_dir, boxes_path, paths[storage], progress=False, storage=storage)
    return image_dir, boxes_path, boxes, paths


def test_compact_holds_the_pooled_features_in_8_bits_and_the_masks_within_half_a_step(two_caches):
    _, _, boxes, paths = two_caches
    with CacheReader(paths["full"]) as full, CacheReader(paths["compact"]) as compact:
        assert (full.storage, compact.storage) == ("full", "compact")
        for stem in full.stems:
            a, b = full.entry(stem), compact.entry(stem)
            h, w, c = a.features.shape
            pooled = a.features.astype(np.float32).reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))
            span = pooled.max(axis=(0, 1)) - pooled.min(axis=(0, 1))
            assert b.features.shape == pooled.shape and b.feature_stride == a.feature_stride
            assert np.all(np.abs(b.features - pooled) <= span / 510 + 1e-3)
            np.testing.assert_allclose(b.fused, a.fused, atol=1e-3)
            if a.n_boxes:
                assert np.abs(compact.masks(stem) - full.masks(stem)).max() <= 1 / 510 + 1e-6
            # a student grid of half the teacher's side or less (LiteMedSAM's 64 → 32 at 128 px,
            # 16 at 64 px) reads the same targets from both
            for grid in (h // 2, h // 4):
                np.testing.assert_allclose(features_to_grid(b.features, grid).astype(np.float32),
                                           features_to_grid(a.features, grid).astype(np.float32),
                                           atol=float(span.max()) / 500 + 2e-3)
    with h5py.File(paths["compact"]) as f, h5py.File(paths["full"]) as g:
        stem = boxes.images[0].stem
        small, big = f["images"][stem], g["images"][stem]
        assert small["features"].dtype == np.uint8 and small.attrs["feature_pool"] == 2
        assert big.attrs["feature_pool"] == 1 and big["features"].dtype == np.float16
        assert small["features"].nbytes * 8 == big["features"].nbytes  # a quarter of the cells, 1 byte not 2


def test_a_full_cache_serves_compact_but_compact_never_serves_full(two_caches):
    image_dir, boxes_path, _, paths = two_caches
    teacher = build_teacher("tiny-sam")
    again = build_cache(teacher, image_dir, boxes_path, paths["full"], progress=False, storage="compact")
    assert again["written"] == 0
    with pytest.raises(MedistillError, match="storage: cache has 'compact', now 'full'"):
        build_cache(teacher, image_dir, boxes_path, paths["compact"], progress=False, storage="full")


def test_an_odd_feature_map_is_quantised_without_pooling():
    features = np.random.default_rng(1).normal(size=(5, 4, 2)).astype(np.float16)
    stored = encode_features(features, "compact")
    assert stored["feature_pool"] == 1 and stored["features"].shape == (5, 4, 2)
    span = features.max(axis=(0, 1)).astype(np.float32) - features.min(axis=(0, 1))
    assert np.all(np.abs(decode_features(stored) - features) <= span / 510 + 1e-6)
    constant = encode_features(np.ones((2, 2, 1), np.float16), "compact")
    np.testing.assert_array_equal(decode_features(constant), np.ones((1, 1, 1)))
