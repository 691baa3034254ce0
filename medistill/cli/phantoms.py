"""``medistill phantoms``: the built-in synthetic data set."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (gets images/ and masks/)")
    parser.add_argument("--n", type=int, default=100, help="number of images")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="phantom i depends only on (seed, i)")
    parser.add_argument("--lesion-probability", type=float, default=0.8,
                        help="chance that an image has lesions (the rest are negatives)")
    parser.add_argument("--multiclass", action="store_true",
                        help="label maps (1 brain tissue, 2 CSF, 3 lesion) instead of binary lesion masks")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from medistill.data.phantoms import generate_phantoms

    paths = generate_phantoms(args.out, args.n, size=args.size, seed=args.seed,
                              lesion_probability=args.lesion_probability,
                              multiclass=args.multiclass, overwrite=args.overwrite)
    print(f"wrote {len(paths)} phantoms to {args.out}")
    return 0
