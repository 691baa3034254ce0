"""Fixtures for the boxes tests: small hand-made image/mask folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medistill.data import write_image_png, write_mask_png


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    """``root/images/STEM.png`` and ``root/masks/STEM.png`` (the mask holds its values)."""
    write_image_png(root / "images" / f"{stem}.png", np.asarray(image, np.uint8))
    write_mask_png(root / "masks" / f"{stem}.png", np.asarray(mask, np.uint8))


def blob_images(root: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """``n`` noisy images with 0-2 bright discs each and their {0, 255} masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for index in range(n):
        image = rng.normal(60, 12, (size, size))
        mask = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(0, 3))):
            radius = rng.uniform(0.08 * size, 0.2 * size)
            cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
            image[disc] += 90
            mask[disc] = 255
        write_pair(root, f"blob_{index:03d}", np.clip(image, 0, 255), mask)
    return root


@pytest.fixture
def two_blob_set(tmp_path: Path) -> Path:
    """Three 10x12 images: two blobs, an empty mask, one blob touching diagonally."""
    root = tmp_path / "set"
    two = np.zeros((10, 12), np.uint8)
    two[2:6, 3:8] = 255   # rows 2..5, columns 3..7
    two[7:9, 9:12] = 255  # rows 7..8, columns 9..11
    write_pair(root, "two", np.full((10, 12), 100), two)
    write_pair(root, "empty", np.full((10, 12), 50), np.zeros((10, 12)))
    diagonal = np.zeros((10, 12), np.uint8)
    diagonal[1, 1] = diagonal[2, 2] = diagonal[3, 3] = 255  # one 8-connected component
    write_pair(root, "diagonal", np.full((10, 12), 70), diagonal)
    return root


@pytest.fixture
def pair_writer():
    """:func:`write_pair`, for tests that build their own folders."""
    return write_pair


@pytest.fixture(scope="session")
def blob_writer():
    """:func:`blob_images`, for tests that need a learnable detection set."""
    return blob_images
