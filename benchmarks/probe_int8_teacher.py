"""Probe: LiteMedSAM's image encoder quantised to int8 (NNCF post-training) on OpenVINO.

Issue 13 asks for int8 "if it fits". This probe answers whether it does on the machine it
runs on: the OpenVINO export of the encoder (the one ``--teacher-backend openvino`` uses)
is quantised with NNCF on nuclei tiles, then compared with Keras fp32 and OpenVINO fp32:
the embedding's relative error, the teacher's masks (decoder in fp32, ground-truth boxes)
and their Dice against the truth, and the encoder's time per image, interleaved
(Keras, fp32, int8, Keras, ...). Calibration and evaluation tiles are disjoint.

NNCF is not a requirement of medistill; install it for this probe only:

    .venv/bin/pip install nncf==3.4.0
    .venv/bin/python benchmarks/probe_int8_teacher.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sets the TensorFlow environment before it is imported)
import numpy as np
from bench_teachers import dice, truth_boxes
from common import argument_parser, load_average, markdown_table, publish

from medistill.data.sources import read_nuclei
from medistill.runtimes import compile_openvino

SECTION_KEY = "teacher-int8"
SECTION_TITLE = "Teacher encoder in int8 (NNCF post-training quantisation, OpenVINO): a probe"
PRESETS = {"int8 (transformer preset)": "transformer", "int8 (default preset)": "default"}


class SwappedEncoder:
    """A teacher runner with the encoder ``encode`` and the decoder of ``runner``."""

    def __init__(self, encode, runner) -> None:
        self.encode, self.decode = encode, runner.decode


def openvino_encoder(compiled):
    """``encode(x)`` of a compiled OpenVINO encoder."""
    return lambda x: np.asarray(compiled(np.asarray(x, np.float32))[0], np.float32)


def quantise(xml: Path, calibration: list[np.ndarray], preset: str, out: Path) -> Path:
    """``xml`` quantised with NNCF on ``calibration`` (preprocessed encoder inputs) into ``out``."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    dataset = nncf.Dataset(calibration, lambda x: x[None].astype(np.float32))
    options = {"model_type": nncf.ModelType.TRANSFORMER} if preset == "transformer" else {}
    quantised = nncf.quantize(model, dataset, subset_size=len(calibration), **options)
    ov.save_model(quantised, str(out))
    return out


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    args = parser.parse_args()
    try:
        import nncf  # noqa: F401
    except ImportError:
        sys.exit("probe_int8_teacher.py needs NNCF: .venv/bin/pip install nncf==3.4.0 (not a medistill requirement)")
    from medistill.teachers.litemedsam.teacher import LiteMedSAMTeacher

    tiles = [e for e in read_nuclei(tile=128).examples if (e.mask > 0).any()]
    calibration_tiles, eval_tiles = (tiles[:2], tiles[2:4]) if args.quick else (tiles[:8], tiles[8:])
    teacher = LiteMedSAMTeacher(backend="openvino")
    keras_teacher = LiteMedSAMTeacher(backend="keras")
    xml = Path(teacher.info["folder"]) / "exports" / "openvino" / "encoder.xml"
    calibration = [teacher.encoder_input(t.image)[0] for t in calibration_tiles]
    inputs = [teacher.encoder_input(t.image)[0][None].astype(np.float32) for t in eval_tiles]
    fp32_runner = teacher.runner
    encoders = {"Keras fp32": keras_teacher.runner.encode, "OpenVINO fp32": fp32_runner.encode}
    with tempfile.TemporaryDirectory() as folder:
        for name, preset in PRESETS.items():
            model = compile_openvino(str(quantise(xml, calibration, preset, Path(folder) / f"{preset}.xml")))
            encoders[name] = openvino_encoder(model)

        load_before = load_average()
        seconds = {name: [] for name in encoders}
        for _ in range(args.rounds):
            for name, encode in encoders.items():
                start = time.perf_counter()
                for x in inputs:
                    encode(x)
                seconds[name].append((time.perf_counter() - start) / len(inputs))
        load_after = load_average()

        reference = [encoders["Keras fp32"](x) for x in inputs]
        keras_masks = [keras_teacher.predict(t.image, truth_boxes(t.mask > 0)).fused() > 0.5 for t in eval_tiles]
        base = statistics.median(seconds["Keras fp32"])
        rows = []
        for name, encode in encoders.items():
            embeddings = [encode(x) for x in inputs]
            error = np.mean([np.linalg.norm(e - r) / np.linalg.norm(r) for e, r in zip(embeddings, reference)])
            teacher.runner = SwappedEncoder(encode, fp32_runner)
            masks = [teacher.predict(t.image, truth_boxes(t.mask > 0)).fused() > 0.5 for t in eval_tiles]
            agree = np.mean([np.mean(m == k) for m, k in zip(masks, keras_masks)])
            scores = [dice(m, t.mask > 0) for m, t in zip(masks, eval_tiles)]
            median = statistics.median(seconds[name])
            rows.append([name, f"{median:.3f}", f"{base / median:.2f}×", f"{error:.4f}",
                         f"{100 * agree:.3f} %", f"{np.mean(scores):.4f}"])
    body = (f"Load {load_before:.2f} → {load_after:.2f}. "
            f"{len(calibration_tiles)} calibration tiles, {len(eval_tiles)} other tiles for the figures "
            f"(nuclei, 128 px → 256); {args.rounds} interleaved rounds, medians; decoder fp32 in every row.\n\n"
            + markdown_table(["encoder", "s/image", "vs Keras", "embedding rel. error", "mask pixels = Keras",
                              "teacher Dice"], rows))
    publish(args, SECTION_KEY, SECTION_TITLE, body)


if __name__ == "__main__":
    main()
