"""Export a distilled student to a verified bundle with the Python API (needs the `export` extra and torch).

Run (after `make demo`, whose distillation run is runs/quickstart/run):

    .venv/bin/python examples/export_student.py runs/quickstart/run --target openvino --precision fp16 \
        --out runs/orchard-openvino-fp16.sam3edge

SOURCE is a distillation run directory (holding student/) or a saved student directory (holding config.json).
int8 is calibrated on --calib (default: the run's own images); every export is verified against PyTorch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="distillation run directory or saved student directory")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write, e.g. my.sam3edge")
    parser.add_argument("--target", default="onnx", help="onnx (default), openvino, coreml or tensorrt")
    parser.add_argument("--precision", default="fp32", help="fp32 (default), fp16 or int8")
    parser.add_argument("--calib", type=Path, help="folder of domain images for int8 calibration and verification")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    args = parser.parse_args(argv)

    if not args.source.is_dir():
        parser.error(f"student not found: {args.source} (a distillation run or saved student directory)")
    if args.calib is not None and not args.calib.is_dir():
        parser.error(f"calibration folder not found: {args.calib}")
    from sam3edge.export.bundle import export_bundle  # imports torch and the exporters

    try:
        manifest = export_bundle(args.source, args.out, target=args.target, precision=args.precision,
                                 calib=args.calib, overwrite=args.overwrite)
    except (OSError, ValueError) as e:  # verification failures and refused arguments are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    check = manifest.get("verification", {})
    figures = {k: check[k] for k in ("recall", "mask_iou", "score_mae") if k in check}
    print(f"wrote {args.out}: {args.target} {args.precision}, verification {figures or 'not run on this host'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
