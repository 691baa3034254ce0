"""``medistill predict``: images and NIfTI volumes in, masks out; resume, safety, sharding, flips."""

from __future__ import annotations

import argparse
import json
import os

import nibabel as nib
import numpy as np
import pytest

from medistill.cli import COMMANDS, run_command
from medistill.cli import predict as predict_command
from medistill.data.io import clear_volume_cache, read_image, read_mask_values, read_volume, volume_slice
from medistill.export import load_predictor
from medistill.predict.engine import predict_probabilities
from medistill.predict.folder import MARKER_NAME

# An oblique-free but permuted and flipped grid: file axes (i, j, k) are (S, L→R flipped, A).
AFFINE = np.array([[0.0, -0.9, 0.0, 40.0], [0.0, 0.0, 1.2, -20.0], [2.5, 0.0, 0.0, 5.0], [0, 0, 0, 1]])


def _predict(*argv: object) -> int:
    """``medistill predict ARGV``'s exit status (its parser and runner, as the CLI calls them)."""
    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    return run_command(COMMANDS["predict"][0], parser.parse_args([str(a) for a in argv]))


@pytest.fixture
def volume(tmp_path, nuclei_tiles):
    """A 4 x 64 x 48 NIfTI volume of nuclei tiles on a permuted, flipped grid, int16 with a scale factor."""
    data = np.stack([t.image[:, :48] for t in nuclei_tiles[20:24]]).astype(np.int16)
    image = nib.Nifti1Image(data, AFFINE)
    image.header.set_slope_inter(0.5, 1.0)
    path = tmp_path / "volumes" / "case01.nii.gz"
    path.parent.mkdir()
    nib.save(image, str(path))
    return path


def test_images_get_png_masks_with_their_stems_equal_to_the_predictor(trained_run, image_folder, tmp_path):
    out = tmp_path / "out"
    assert _predict("--model", trained_run, "-i", image_folder, "-o", out, "--probabilities") == 0
    predictor = load_predictor(trained_run)
    stems = sorted(p.stem for p in image_folder.glob("*.png"))
    assert sorted(p.stem for p in out.glob("*.png")) == stems
    for stem in stems:
        image = read_image(image_folder / f"{stem}.png")
        prob = predictor.predict(image)
        mask = read_mask_values(out / f"{stem}.png")
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask, (prob > 0.5).astype(np.uint8) * 255)
        np.testing.assert_allclose(np.load(out / "probabilities" / f"{stem}.npy"), prob, atol=1e-6)
    assert any(read_mask_values(out / f"{s}.png").any() for s in stems), "the trained student finds nuclei"


@pytest.mark.parametrize("axis", [2, 0])
def test_a_volume_comes_back_on_its_grid_with_every_slice_predicted(trained_run, volume, tmp_path, axis):
    out = tmp_path / "out"
    assert _predict("--model", trained_run, "-i", volume.parent, "-o", out, "--axis", axis, "--probabilities") == 0
    source, labels = nib.load(str(volume)), nib.load(str(out / "case01.nii.gz"))
    assert labels.shape == source.shape
    np.testing.assert_allclose(labels.affine, source.affine)
    assert labels.get_data_dtype() == np.uint8 and labels.header.get_intent()[0] == "label"
    assert labels.header.get_zooms() == source.header.get_zooms()
    predictor = load_predictor(trained_run)
    image, predicted = read_volume(volume), read_volume(out / "case01.nii.gz")
    for index in range(image.shape[axis]):
        plane = volume_slice(image, index, axis)[..., None].astype(np.float32)
        expected = predictor.labels(predictor.predict(plane))
        np.testing.assert_array_equal(volume_slice(predicted, index, axis), expected)
    probabilities = nib.load(str(out / "probabilities" / "case01.nii.gz"))
    assert probabilities.shape == source.shape and probabilities.get_data_dtype() == np.float32
    np.testing.assert_allclose(probabilities.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(probabilities.dataobj) > 0.5, np.asarray(labels.dataobj) > 0)


def test_a_killed_run_resumes_and_never_rewrites_a_finished_mask(trained_run, image_folder, tmp_path):
    out = tmp_path / "out"
    assert _predict("--model", trained_run, "-i", image_folder, "-o", out) == 0
    masks = sorted(out.glob("*.png"))
    masks[0].unlink()  # as if killed before this one
    os.utime(masks[1], ns=(1, 1))
    assert _predict("--model", trained_run, "-i", image_folder, "-o", out) == 0
    assert masks[0].is_file() and masks[1].stat().st_mtime_ns == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_outputs_never_land_among_inputs_nor_replace_a_strangers_file(trained_run, image_folder, tmp_path, capsys):
    assert _predict("--model", trained_run, "-i", image_folder, "-o", image_folder / "masks") == 2
    assert "inside the input folder" in capsys.readouterr().err and not (image_folder / "masks").exists()
    assert _predict("--model", trained_run, "-i", image_folder / next(image_folder.iterdir()).name,
                    "-o", image_folder) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert _predict("--model", trained_run, "-i", image_folder, "-o", tmp_path) == 2
    assert "contains the input folder" in capsys.readouterr().err
    out = tmp_path / "out"
    out.mkdir()
    stranger = out / f"{sorted(image_folder.iterdir())[2].stem}.png"
    stranger.write_bytes(b"someone else's")
    assert _predict("--model", trained_run, "-i", image_folder, "-o", out) == 2
    assert "did not write it" in capsys.readouterr().err
    # the stranger's file is part 0's output; part 1, started first, refuses too (else part 0 would find
    # part 1's marker, no longer look for strangers, and take the file for its mask)
    assert _predict("--model", trained_run, "-i", image_folder, "-o", out, "--part-id", 1, "--num-parts", 2) == 2
    assert "did not write it" in capsys.readouterr().err
    assert stranger.read_bytes() == b"someone else's" and sorted(out.iterdir()) == [stranger]
    assert sorted(p.name for p in image_folder.iterdir()) == sorted(p.name for p in image_folder.glob("*.png"))


def test_resuming_with_other_settings_is_refused(trained_run, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict("--model", trained_run, "-i", image_folder, "-o", out) == 0
    assert json.loads((out / MARKER_NAME).read_text())["settings"]["tta"] is False
    assert _predict("--model", trained_run, "-i", image_folder, "-o", out, "--tta") == 2
    assert "tta: False → True" in capsys.readouterr().err


def test_bad_model_and_bad_input_get_clear_errors(trained_run, image_folder, tmp_path, capsys):
    assert _predict("--model", tmp_path / "nowhere", "-i", image_folder, "-o", tmp_path / "o1") == 2
    assert "model not found" in capsys.readouterr().err
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    assert _predict("--model", empty_run, "-i", image_folder, "-o", tmp_path / "o2") == 2
    assert "preprocessing.json" in capsys.readouterr().err
    assert _predict("--model", trained_run, "--backend", "onnxruntime", "-i", image_folder, "-o", tmp_path / "o3") == 2
    assert "medistill export" in capsys.readouterr().err
    (image_folder / "broken.png").write_bytes(b"not a png")
    assert _predict("--model", trained_run, "-i", image_folder, "-o", tmp_path / "o4") == 2
    assert "broken.png" in capsys.readouterr().err


def test_parts_split_the_files_between_processes(trained_run, image_folder, tmp_path):
    out = tmp_path / "out"
    assert _predict("--model", trained_run, "-i", image_folder, "-o", out, "--part-id", 0, "--num-parts", 2) == 0
    first = {p.name for p in out.glob("*.png")}
    assert len(first) == 3
    assert _predict("--model", trained_run, "-i", image_folder, "-o", out, "--part-id", 1, "--num-parts", 2) == 0
    assert {p.name for p in out.glob("*.png")} == {p.name for p in image_folder.glob("*.png")}


def test_flips_average_the_four_mirrored_predictions(trained_run, nuclei_tiles):
    predictor = load_predictor(trained_run)
    image = nuclei_tiles[40].image[:32, :32, None].astype(np.float32)  # network size: no padding
    plain = predict_probabilities(predictor, [image])[0]
    flipped = predict_probabilities(predictor, [image], tta=True)[0]
    by_hand = np.mean([np.flip(predictor.predict(np.flip(image, axes)), axes)
                       for axes in [(), (1,), (0,), (0, 1)]], axis=0)
    np.testing.assert_allclose(flipped, by_hand, atol=1e-5)
    assert np.abs(flipped - plain).max() > 1e-3


def test_flips_keep_the_padding_at_the_bottom_right(trained_run, nuclei_tiles):
    """A wide image: the flipped copies flip the image, not the padding below it."""
    from medistill.data.preprocess import preprocess_image
    from medistill.predict.engine import _flip_content

    image = nuclei_tiles[40].image[:20, :64, None].astype(np.float32)
    x, geometry = preprocess_image(image, load_predictor(trained_run).card.preprocess)
    flipped = _flip_content(x, geometry, (0,))
    np.testing.assert_array_equal(flipped[geometry.resized_height:], 0)
    np.testing.assert_array_equal(flipped[:geometry.resized_height], x[:geometry.resized_height][::-1])


def test_post_processing_options_reach_the_masks(trained_run, image_folder, tmp_path):
    from scipy import ndimage

    plain, cleaned = tmp_path / "plain", tmp_path / "cleaned"
    assert _predict("--model", trained_run, "-i", image_folder, "-o", plain) == 0
    assert _predict("--model", trained_run, "-i", image_folder, "-o", cleaned, "--largest-component") == 0
    counts = [ndimage.label(read_mask_values(p) > 0)[1] for p in sorted(cleaned.glob("*.png"))]
    assert max(counts) == 1
    assert max(ndimage.label(read_mask_values(p) > 0)[1] for p in sorted(plain.glob("*.png"))) > 1


def teardown_module() -> None:
    clear_volume_cache()


def test_the_cards_noise_floor_reaches_predict_and_evaluate_unless_turned_off(trained_run, image_folder, tmp_path):
    """A card's ``min_component`` removes small components in both commands; --no-noise-floor keeps them."""
    import shutil

    from scipy import ndimage

    from medistill.evaluate.predict_eval import EvalConfig, predict_and_evaluate

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    card = json.loads((run / "preprocessing.json").read_text())
    plain = tmp_path / "plain"
    assert _predict("--model", run, "-i", image_folder, "-o", plain) == 0
    sizes = np.concatenate([np.bincount(ndimage.label(read_mask_values(p) > 0, np.ones((3, 3)))[0].ravel())[1:]
                            for p in sorted(plain.glob("*.png"))])
    cut = int(np.median(sizes))  # about half the nuclei fall below the floor
    card["min_component"] = cut / (64 * 64)
    (run / "preprocessing.json").write_text(json.dumps(card))
    floored, kept = tmp_path / "floored", tmp_path / "kept"
    assert _predict("--model", run, "-i", image_folder, "-o", floored) == 0
    assert _predict("--model", run, "-i", image_folder, "-o", kept, "--no-noise-floor") == 0
    for name in sorted(p.name for p in plain.glob("*.png")):
        np.testing.assert_array_equal(read_mask_values(kept / name), read_mask_values(plain / name))
        mask = read_mask_values(floored / name) > 0
        labels, count = ndimage.label(mask)
        assert count == 0 or np.bincount(labels.ravel())[1:].min() >= cut
        assert not (mask & ~(read_mask_values(plain / name) > 0)).any()  # only removes
    assert sum(read_mask_values(p).astype(bool).sum() for p in floored.glob("*.png")) < \
        sum(read_mask_values(p).astype(bool).sum() for p in plain.glob("*.png"))
    for noise_floor, folder in ((True, floored), (False, kept)):
        predict_and_evaluate(EvalConfig(image_dir=str(image_folder), model_path=str(run), num_vis=0,
                                        vis_dir=str(tmp_path / f"eval_{noise_floor}"), noise_floor=noise_floor))
        for name in sorted(p.name for p in folder.glob("*.png")):
            np.testing.assert_array_equal(read_mask_values(tmp_path / f"eval_{noise_floor}" / "predictions" / name),
                                          read_mask_values(folder / name))
