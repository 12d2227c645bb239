"""How much of the teacher's quality survives when its heads run on another feature grid?

    python benchmarks/grid_oracle.py                 # ~1 min: writes benchmarks/results/grid_oracle.{json,md}

A distilled student with teacher-initialised heads can at best hand those heads the teacher's own
features. This script does exactly that (an "oracle" image encoder): the teacher's FPN levels,
resampled to the grid of a student of input size S (S/4, S/8, S/16), go through the ``toy``
student's heads loaded from the teacher, with the student's own position encodings. On held-out
orchard scenes (seed 777) it reports cgF1 per S next to the teacher's. The result fixed the ``toy``
student's input size: at 224 px (a 14 x 14 grid for a teacher that saw 16 x 16 tokens) even perfect
features keep ~81 % of the teacher's cgF1; at 256 px (16 x 16) all of it.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from sam3edge.atomic import atomic_write_text
from sam3edge.data.coco import ConceptDataset
from sam3edge.data.orchard import ORCHARD_VOCABULARY
from sam3edge.data.orchard_dataset import write_orchard_dataset
from sam3edge.eval import evaluate
from sam3edge.eval.agreement import summary
from sam3edge.eval.predict import predict_dataset
from sam3edge.models.bundled import resolve_model
from sam3edge.models.image_encoder import ImageFeatures
from sam3edge.models.registry import create_student
from sam3edge.models.student_io import init_heads_from_teacher
from sam3edge.models.teacher import Sam3Teacher
from sam3edge.runtime.concepts import ConceptCache

REPO = Path(__file__).resolve().parents[1]
EVAL_SEED = 777


def oracle_student(teacher: Sam3Teacher, size: int, phrases: list[str]):
    """The ``toy`` student at input ``size`` whose image encoder is replaced by the teacher's (resampled)."""
    student = create_student("toy", input_size=size)
    init_heads_from_teacher(student, teacher)
    student.set_concepts(ConceptCache.from_teacher(teacher, phrases))
    own = student.encode_images
    t_size = teacher.image_size

    def encode(x: torch.Tensor) -> ImageFeatures:  # x: [B, 3, S, S] in [0, 1]
        pos = own(x).pos  # the student's position encodings for its grid
        xt = x if x.shape[-1] == t_size else F.interpolate(x, size=(t_size, t_size), mode="bilinear",
                                                            align_corners=False, antialias=x.shape[-1] > t_size)
        fpn = teacher.encode_images(xt * 2 - 1).fpn_hidden_states
        levels = [f if f.shape[-2:] == p.shape[-2:] else
                  F.interpolate(f, size=p.shape[-2:], mode="bilinear", align_corners=False,
                                antialias=f.shape[-1] > p.shape[-1]) for f, p in zip(fpn, pos)]
        return ImageFeatures(levels, pos)

    student.encode_images = encode
    return student


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[192, 224, 256, 288])
    ap.add_argument("--n", type=int, default=100, help="held-out scenes")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "grid_oracle")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ann = args.work / "heldout" / "annotations.json"
    if not ann.is_file():
        write_orchard_dataset(ann.parent, n=args.n, seed=EVAL_SEED, size=224, progress=False)
    ds = ConceptDataset.load(ann)
    teacher = Sam3Teacher.from_pretrained(resolve_model("orchard-toy"))
    phrases = [c.phrase for c in ORCHARD_VOCABULARY.concepts] + list(ORCHARD_VOCABULARY.distractors)
    with torch.no_grad():
        ref = summary(evaluate(ann, predict_dataset(teacher, ds, progress=False)))
        rows = []
        for size in args.sizes:
            s = summary(evaluate(ann, predict_dataset(oracle_student(teacher, size, phrases), ds, progress=False)))
            rows.append({"input_size": size, "grid": size // 16, **s, "of_teacher_cgf1": s["cgf1"] / ref["cgf1"]})
            print(f"{size} px (grid {size // 16}): cgF1 {s['cgf1']:.3f} = {s['cgf1'] / ref['cgf1']:.0%} of the teacher")
    token_grid = teacher.image_size // teacher.config.vision_config.backbone_config.patch_size
    result = {"command": "python benchmarks/grid_oracle.py " + " ".join(argv or []), "heldout_seed": EVAL_SEED,
              "n_images": args.n, "teacher_token_grid": token_grid, "teacher": ref, "oracle": rows,
              "host": {"machine": platform.machine(), "torch": torch.__version__}}
    out = REPO / "benchmarks" / "results" / "grid_oracle.json"
    atomic_write_text(out, json.dumps(result, indent=1))
    md = [f"Teacher heads on the teacher's own features resampled to a student's grid (held-out orchard, "
          f"seed {EVAL_SEED}, {args.n} scenes; teacher token grid {token_grid} x {token_grid}).", "",
          "| student input | grid S/16 | cgF1 | of teacher | IL_MCC | recall | mask IoU |",
          "|---|---|---|---|---|---|---|",
          f"| teacher ({teacher.image_size} px) | {token_grid} | {ref['cgf1']:.3f} | 100 % | {ref['il_mcc']:.3f} | "
          f"{ref['recall']:.3f} | {ref['mean_matched_iou']:.3f} |"]
    md += [f"| {r['input_size']} px | {r['grid']} | {r['cgf1']:.3f} | {r['of_teacher_cgf1']:.0%} | {r['il_mcc']:.3f} | "
           f"{r['recall']:.3f} | {r['mean_matched_iou']:.3f} |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
