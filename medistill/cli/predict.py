"""``medistill predict``: masks for new images or NIfTI volumes (a folder or one file)."""

from __future__ import annotations

import argparse

from medistill.cli.options import add_label_options
from medistill.runtimes import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", required=True,
                        help="run folder, .keras file, or an exported model.onnx / model.xml / model.tflite")
    parser.add_argument("-i", "--input", required=True, dest="inputs",
                        help="folder of images (PNG, JPEG, TIFF, NPY) or NIfTI volumes (.nii, .nii.gz), or one file")
    parser.add_argument("-o", "--output", required=True, dest="out",
                        help="output folder (not the input folder): STEM.png masks, STEM.nii[.gz] label volumes")
    parser.add_argument("--backend", default="auto", choices=("auto", "keras", "onnxruntime", "openvino", "litert"),
                        help="runtime (default: from the model file; keras for a run folder). With a run folder, "
                             "onnxruntime/openvino/litert use RUN/exports/ written by `medistill export`")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="bf16 (with --backend openvino): computes in bfloat16 on CPUs with bf16 units; on "
                             "the project's CPU 0.28-0.47x Keras' batch-1 time, probabilities moved by up to 0.21 "
                             "and masks stayed within the README's tolerance (default fp32)")
    parser.add_argument("--axis", type=int, default=2, help="volumes: slice axis, 0 sagittal, 1 coronal, 2 axial "
                                                            "(RAS+; default 2)")
    parser.add_argument("--batch", type=int, default=8, help="images or slices per forward pass (default 8)")
    add_label_options(parser)
    parser.add_argument("--probabilities", action="store_true",
                        help="also write the soft maps to OUT/probabilities/ (.npy for images, NIfTI for volumes)")
    parser.add_argument("--tta", action="store_true", help="average over left-right and up-down flips (4x slower)")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only the largest connected component of each class (3-D for volumes)")
    parser.add_argument("--min-size", type=int, default=0,
                        help="remove components smaller than N pixels (voxels for volumes) (default 0: off)")
    parser.add_argument("--part-id", type=int, default=0, help="this process's part, 0..NUM_PARTS-1 (default 0)")
    parser.add_argument("--num-parts", type=int, default=1,
                        help="split the files between this many processes sharing -o (default 1)")


def run(args: argparse.Namespace) -> int:
    from medistill.predict.folder import PredictConfig, describe, predict_folder

    config = PredictConfig(
        model=args.model, inputs=args.inputs, out=args.out, backend=args.backend, precision=args.precision, axis=args.axis,
        batch=args.batch, threshold=args.threshold, noise_floor=args.noise_floor,
        probabilities=args.probabilities, tta=args.tta,
        largest_component=args.largest_component, min_size=args.min_size, part_id=args.part_id,
        num_parts=args.num_parts)
    print(describe(predict_folder(config), args.out))
    return 0
