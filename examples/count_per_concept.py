"""Segment every image in a folder and print how many instances of each concept each image holds (torch-free).

Run (after `make demo`):

    .venv/bin/python examples/count_per_concept.py runs/quickstart/orchard-openvino-int8.sam3edge \
        runs/quickstart/heldout/images --concept "ripe apple" --concept leaf

Without --concept it counts every concept the bundle carries.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sam3edge.runtime.segmenter import Segmenter
from sam3edge.runtime.sources import image_suffixes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a NAME.sam3edge bundle directory (sam3edge export)")
    parser.add_argument("folder", type=Path, help="a folder of images")
    parser.add_argument("--concept", action="append", help="a concept phrase (repeat; default: the bundle's)")
    parser.add_argument("--threshold", type=float, default=0.5, help="score threshold (default 0.5)")
    args = parser.parse_args(argv)

    if not args.bundle.is_dir():
        parser.error(f"bundle not found: {args.bundle} (a directory written by `sam3edge export`)")
    if not args.folder.is_dir():
        parser.error(f"image folder not found: {args.folder}")
    suffixes = image_suffixes()
    files = sorted(p for p in args.folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        parser.error(f"no images in {args.folder}")
    try:
        seg = Segmenter.load(args.bundle)
        if args.concept:
            seg.set_concepts(args.concept)
        concepts = seg.concepts
        rows = [(f.name, seg.segment(f, score_threshold=args.threshold, masks=False).phrases) for f in files]
    except (OSError, ValueError, RuntimeError) as e:  # BundleError is a ValueError, BackendUnavailable a RuntimeError
        print(f"error: {e}", file=sys.stderr)
        return 1
    width = max(len("image"), *(len(name) for name, _ in rows))
    print(f"{'image':<{width}}  " + "  ".join(concepts))
    for name, phrases in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{phrases.count(c):>{len(c)}}" for c in concepts))
    totals = [sum(phrases.count(c) for _, phrases in rows) for c in concepts]
    print(f"{'total':<{width}}  " + "  ".join(f"{n:>{len(c)}}" for n, c in zip(totals, concepts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
