"""``sam3edge <verb>``: the command line. Only verbs that work are listed.

Heavy imports (torch, transformers) happen inside the verbs, so ``sam3edge --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BUNDLED_TEACHERS = {"orchard-toy": "teachers/orchard-toy"}


def resolve_model(spec: str) -> str:
    """A bundled teacher name (``orchard-toy``) or a directory / hub id, as given."""
    if spec in BUNDLED_TEACHERS:
        from importlib.resources import files

        path = Path(str(files("sam3edge"))) / BUNDLED_TEACHERS[spec]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"the bundled teacher {spec!r} is missing from {path}; reinstall sam3edge "
                                    "or reproduce it with benchmarks/train_toy_teacher.py")
        return str(path)
    return spec


def _cmd_data_orchard(args) -> int:
    from sam3edge.data.orchard_dataset import write_orchard_dataset

    path = write_orchard_dataset(args.out, n=args.n, seed=args.seed, size=args.size, distractors=args.distractors,
                                 synonym_rate=args.synonym_rate, progress=not args.quiet)
    print(f"wrote {path}")
    return 0


def _cmd_eval(args) -> int:
    import torch

    from sam3edge.data.coco import ConceptDataset, atomic_write_text
    from sam3edge.eval import evaluate
    from sam3edge.eval.predict import predict_dataset
    from sam3edge.models.teacher import Sam3Teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = ConceptDataset.load(args.data)
    model = Sam3Teacher.from_pretrained(resolve_model(args.model), device=args.device)
    preds = predict_dataset(model, dataset, progress=not args.quiet)
    report = evaluate(args.data, preds, score_threshold=args.threshold)
    print(report.format_table())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=1))
        print(f"wrote {args.json}")
    if args.predictions:
        atomic_write_text(args.predictions, json.dumps(preds))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam3edge", description="SAM3 concept segmentation, distilled for the edge.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    data = sub.add_parser("data", help="generate or convert datasets")
    dsub = data.add_subparsers(dest="what", metavar="KIND", required=True)
    o = dsub.add_parser("orchard", help="render the synthetic orchard concept domain (SA-Co layout)")
    o.add_argument("--out", required=True, type=Path, help="output folder (images/ + annotations.json)")
    o.add_argument("--n", type=int, default=100, help="number of images")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--size", type=int, default=224, help="image side in pixels")
    o.add_argument("--distractors", type=int, default=2, help="absent distractor phrases asked per image")
    o.add_argument("--synonym-rate", type=float, default=0.0, help="ask a concept by a synonym this often")
    o.add_argument("--quiet", action="store_true")
    o.set_defaults(func=_cmd_data_orchard)

    e = sub.add_parser("eval", help="evaluate a SAM3 model on an SA-Co style dataset (cgF1, mask IoU, ...)")
    e.add_argument("--model", required=True, help="model directory, hub id, or a bundled name: orchard-toy")
    e.add_argument("--data", required=True, type=Path, help="SA-Co style annotations.json")
    e.add_argument("--threshold", type=float, default=0.5, help="score threshold (SAM3's cgF1 uses 0.5)")
    e.add_argument("--json", type=Path, help="also write the report as JSON here")
    e.add_argument("--predictions", type=Path, help="also write the COCO-style predictions here")
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError, KeyError) as e:
        print(f"sam3edge {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
