"""A distilled student against the bundled toy teacher on orchard held-out sets it never saw (other seeds).

    python benchmarks/distill_toy.py --fresh       # first: the student in runs/distill_toy/run/student
    python benchmarks/heldout_seeds.py             # ~1 min: writes benchmarks/results/heldout_seeds.{json,md}
    python benchmarks/heldout_seeds.py --student runs/distill_toy_fast/run/student --name heldout_seeds_toy-fast

The distillation benchmark scores on seed 777 (the teacher's own held-out set); this checks that the
student / teacher cgF1 ratio is a property of the student, not of that set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sam3edge.atomic import atomic_write_text
from sam3edge.data.coco import ConceptDataset
from sam3edge.data.orchard_dataset import write_orchard_dataset
from sam3edge.eval import evaluate
from sam3edge.eval.agreement import summary
from sam3edge.eval.predict import predict_dataset
from sam3edge.models.bundled import resolve_model
from sam3edge.models.student_io import load_student
from sam3edge.models.teacher import Sam3Teacher

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, default=REPO / "runs" / "distill_toy" / "run" / "student")
    ap.add_argument("--seeds", type=int, nargs="+", default=[4242, 9001])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "heldout_seeds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="heldout_seeds", help="results file stem in benchmarks/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    student = load_student(args.student)
    teacher = Sam3Teacher.from_pretrained(resolve_model("orchard-toy"))
    rows = []
    for seed in args.seeds:
        ann = args.work / str(seed) / "annotations.json"
        if not ann.is_file():
            write_orchard_dataset(ann.parent, n=args.n, seed=seed, size=224, progress=False)
        ds = ConceptDataset.load(ann)
        with torch.no_grad():
            s = summary(evaluate(ann, predict_dataset(student, ds, progress=False)))
            t = summary(evaluate(ann, predict_dataset(teacher, ds, progress=False)))
        rows.append({"seed": seed, "n_images": args.n, "student": s, "teacher": t, "ratio": s["cgf1"] / t["cgf1"]})
        print(f"seed {seed}: student cgF1 {s['cgf1']:.3f}, teacher {t['cgf1']:.3f} ({rows[-1]['ratio']:.1%})")
    out = REPO / "benchmarks" / "results" / f"{args.name}.json"
    atomic_write_text(out, json.dumps({"command": "python benchmarks/heldout_seeds.py " + " ".join(argv or []),
                                       "student": str(args.student), "rows": rows}, indent=1))
    md = ["| held-out seed | scenes | student cgF1 | teacher cgF1 | student / teacher | student IL_MCC | "
          "teacher IL_MCC |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['seed']} | {r['n_images']} | {r['student']['cgf1']:.3f} | {r['teacher']['cgf1']:.3f} | "
           f"{r['ratio']:.1%} | {r['student']['il_mcc']:.3f} | {r['teacher']['il_mcc']:.3f} |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
