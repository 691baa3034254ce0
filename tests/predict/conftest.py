"""A small binary student trained for a few steps on real nuclei tiles, its run folder, and the tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medistill.data.io import write_image_png
from medistill.data.sources import read_nuclei

SIZE = 32


@pytest.fixture(scope="session")
def nuclei_tiles() -> list:
    """The 64 tiles (64 px) of stardist's nuclei image: real images, binary masks {0, 255}."""
    return read_nuclei(tile=64).examples


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, nuclei_tiles) -> Path:
    """A U-Net (4 base filters, depth 2) trained for 40 steps at 32 px, saved as a run folder."""
    import keras

    from medistill.data.preprocess import PreprocessConfig, preprocess_image, preprocess_mask
    from medistill.export import ModelCard, save_model_artifacts
    from medistill.networks import build_student

    keras.utils.set_random_seed(0)
    config = PreprocessConfig(size=SIZE)
    xs, ys = [], []
    for example in nuclei_tiles[:32]:
        x, geometry = preprocess_image(example.image[..., None].astype("float32"), config)
        xs.append(x)
        ys.append(preprocess_mask(example.mask > 0, geometry)[..., None].astype("float32"))
    model = build_student("unet", in_channels=1, num_classes=1, base_filters=4, depth=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(np.stack(xs), np.stack(ys), batch_size=8, epochs=10, verbose=0)
    run = tmp_path_factory.mktemp("run")
    save_model_artifacts(model, run, ModelCard(config, 2))
    return run


@pytest.fixture
def image_folder(tmp_path, nuclei_tiles) -> Path:
    """Six nuclei tiles as 8-bit PNGs (the last 6: not trained on)."""
    folder = tmp_path / "images"
    for example in nuclei_tiles[-6:]:
        write_image_png(folder / f"{example.stem}.png", example.image.astype(np.uint8))
    return folder
