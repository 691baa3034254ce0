"""``medistill sources``: export a real data set that installs offline."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="mni152, colin27, nuclei or cells3d")
    parser.add_argument("--out", required=True, help="output folder (gets images/, masks/ and README.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--step", type=int, help="mni152, colin27, cells3d: keep every STEP-th slice with foreground")
    parser.add_argument("--tile", type=int, help="nuclei: tile side in pixels (default 128)")
    parser.add_argument("--binary", action="store_true", default=None,
                        help="mni152: one brain mask instead of grey/white-matter labels")
    parser.add_argument("--template-dir", help="colin27: folder holding ch2.nii.gz and ch2bet.nii.gz")


def run(args: argparse.Namespace) -> int:
    from medistill.data.sources import export_source

    given = {"step": args.step, "tile": args.tile, "binary": args.binary, "template_dir": args.template_dir}
    options = {name: value for name, value in given.items() if value is not None}
    out = export_source(args.name, args.out, overwrite=args.overwrite, **options)
    print(f"exported {args.name} to {out} (see {out}/README.md for origin and licence)")
    return 0
