"""Segment one image with a bundle and save an overlay PNG (torch-free: numpy, Pillow and the bundle's runtime).

Run (after `make demo`, which writes runs/quickstart/*.sam3edge and runs/quickstart/heldout/):

    .venv/bin/python examples/segment_image.py runs/quickstart/orchard-onnx-int8.sam3edge \
        runs/quickstart/heldout/images/<one of them>.png --concept "ripe apple" --out overlay.png

Without --concept it segments every concept the bundle carries.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sam3edge.runtime.overlay import save_overlay
from sam3edge.runtime.segmenter import Segmenter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a NAME.sam3edge bundle directory (sam3edge export)")
    parser.add_argument("image", type=Path, help="the image to segment (.png, .jpg, ...)")
    parser.add_argument("--concept", action="append", help="a concept phrase (repeat; default: the bundle's)")
    parser.add_argument("--threshold", type=float, default=0.5, help="score threshold (default 0.5)")
    parser.add_argument("--out", type=Path, default=Path("overlay.png"), help="overlay to write (default overlay.png)")
    args = parser.parse_args(argv)

    if not args.bundle.is_dir():
        parser.error(f"bundle not found: {args.bundle} (a directory written by `sam3edge export`)")
    if not args.image.is_file():
        parser.error(f"image not found: {args.image}")
    try:
        seg = Segmenter.load(args.bundle)
        if args.concept:
            seg.set_concepts(args.concept)
        inst = seg.segment(args.image, score_threshold=args.threshold)
        save_overlay(args.out, args.image, inst)
    except (OSError, ValueError, RuntimeError) as e:  # BundleError is a ValueError, BackendUnavailable a RuntimeError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(inst)} instances of {', '.join(seg.concepts)} on {seg.backend_name}; overlay: {args.out}")
    for phrase, score, box in zip(inst.phrases, inst.scores, inst.boxes):
        print(f"  {phrase:<20} {score:.2f}  box {[round(float(v)) for v in box]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
