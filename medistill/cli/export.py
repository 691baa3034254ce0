"""``medistill export``: a trained student as ONNX, OpenVINO IR or LiteRT, for `medistill predict --backend`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="run folder (or its .keras file)")
    parser.add_argument("--format", required=True, choices=("onnx", "openvino", "litert"),
                        help="onnx (onnxruntime), openvino (OpenVINO IR .xml + .bin) or litert (.tflite)")
    parser.add_argument("--out", help="file to write (default RUN/exports/model.onnx, model.xml or model.tflite); "
                                      "preprocessing.json is written beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export at that path")


def run(args: argparse.Namespace) -> int:
    from medistill.predict.exporter import export_model

    path = export_model(args.model, args.format, args.out, overwrite=args.overwrite)
    print(f"exported {args.model} to {path}; run it with: medistill predict --model {path} -i IN -o OUT")
    return 0
