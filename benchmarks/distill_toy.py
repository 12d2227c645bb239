"""Distil the ``toy`` student from the bundled orchard toy teacher on a CPU, and score both on held-out scenes.

    python benchmarks/distill_toy.py --fresh    # ~10 min on 2 cores: writes benchmarks/results/distill_toy.{json,md}
    python benchmarks/distill_toy.py --fresh --stages 1,2 --work runs/distill_toy_s2 --name distill_toy_stage2
    python benchmarks/distill_toy.py --fresh --student toy-fast --stages 1,2 --work runs/distill_toy_fast \
        --name distill_toy_fast     # the fast multi-concept heads: their new parts need stage 2

The training images are an unlabelled orchard folder (seed 2024): the student learns from the
teacher's pseudo-labels only, no ground truth. Both models are then evaluated with cgF1 on the
teacher's held-out orchard set (seed 777, the one in toy_teacher.json), and the student against
the teacher's own instances (agreement). Wall time of every phase is recorded.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from sam3edge.atomic import atomic_write_text
from sam3edge.data.coco import ConceptDataset
from sam3edge.data.orchard import ORCHARD_VOCABULARY, render_scene, scene_rng
from sam3edge.data.orchard_dataset import write_orchard_dataset
from sam3edge.distill.config import DistillConfig
from sam3edge.distill.run import distill
from sam3edge.eval import evaluate
from sam3edge.eval.agreement import summary
from sam3edge.eval.predict import predict_dataset
from sam3edge.models.bundled import resolve_model
from sam3edge.models.student_io import load_student
from sam3edge.models.teacher import Sam3Teacher

REPO = Path(__file__).resolve().parents[1]
TRAIN_SEED, EVAL_SEED = 2024, 777


def write_unlabelled(folder: Path, n: int, seed: int, size: int = 224) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"scene_{i:05d}.png"
        if not path.is_file():
            Image.fromarray(render_scene(scene_rng(seed, i), size).image).save(path)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "distill_toy")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--student", default="toy", help="registry entry (toy, toy-fast ...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="student override, e.g. --set mask_mode=coarse (repeatable)")
    ap.add_argument("--stages", default="1", help="1: encoder onto the teacher's features only (the toy student's "
                    "heads are the teacher's); 1,2: then end to end on the teacher's outputs")
    ap.add_argument("--steps", type=int, default=150, help="stage-2 steps (with --stages 1,2)")
    ap.add_argument("--stage1-steps", type=int, default=2400)
    ap.add_argument("--stage1-lr", type=float, default=2e-3)
    ap.add_argument("--lr", type=float, default=1e-4, help="stage-2 learning rate")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--eval-n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="distill_toy", help="results file stem in benchmarks/results")
    ap.add_argument("--fresh", action="store_true", help="delete the work directory first")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)

    times = {}
    t0 = time.time()
    images = write_unlabelled(args.work / "images", args.images, TRAIN_SEED)
    times["render_s"] = round(time.time() - t0, 1)
    concepts = [c.phrase for c in ORCHARD_VOCABULARY.concepts] + list(ORCHARD_VOCABULARY.distractors)
    teacher_dir = resolve_model("orchard-toy")
    stages = [int(x) for x in args.stages.split(",")]
    cfg = DistillConfig(teacher=teacher_dir, images=str(images), concepts=concepts, student=args.student, stages=stages,
                        student_overrides=_overrides(args.set),
                        out=str(args.work / "run"), steps=args.steps, stage1_steps=args.stage1_steps,
                        stage1_lr=args.stage1_lr, lr=args.lr,
                        batch=args.batch, pairs=args.pairs, holdout=0.05, threads=args.threads, cache_batch=8)
    t0 = time.time()
    report = distill(cfg, progress=True)
    times["distill_s"] = round(time.time() - t0, 1)  # cache + stage 1 + stage 2 + held-out agreement
    logs = {}
    for stage in [f"stage{k}" for k in stages]:
        tc = json.loads((args.work / "run" / stage / "train_config.json").read_text())
        logs[stage] = tc["steps"]

    heldout = args.work / "heldout"
    ann = heldout / "annotations.json"
    if not ann.is_file():
        write_orchard_dataset(heldout, n=args.eval_n, seed=EVAL_SEED, size=224, progress=False)
    ds = ConceptDataset.load(ann)
    t0 = time.time()
    student = load_student(args.work / "run" / "student")
    student_gt = summary(evaluate(ann, predict_dataset(student, ds)))
    stage1_gt = (summary(evaluate(ann, predict_dataset(stage1_student(args.work / "run", student, args.student,
                                                                      _overrides(args.set)), ds)))
                 if 2 in stages else None)
    teacher_gt = summary(evaluate(ann, predict_dataset(Sam3Teacher.from_pretrained(teacher_dir), ds)))
    times["heldout_eval_s"] = round(time.time() - t0, 1)
    ratio = student_gt["cgf1"] / teacher_gt["cgf1"] if teacher_gt["cgf1"] else None
    result = {
        "command": "python benchmarks/distill_toy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "student": args.student, "student_overrides": _overrides(args.set),
        "train_images": args.images, "seed": TRAIN_SEED, "steps": logs, "stage1_lr": args.stage1_lr, "lr": args.lr,
        "batch": args.batch, "pairs": args.pairs,
        "times": times, "cache_bytes_per_image": report["cache_bytes_per_image"],
        "heldout": {"seed": EVAL_SEED, "n_images": args.eval_n, "student": student_gt, "teacher": teacher_gt,
                    "student_over_teacher_cgf1": ratio, "after_stage1_with_teacher_heads": stage1_gt},
        "agreement_vs_teacher": report["eval"]["vs_teacher"],
        "host": {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()},
    }
    out = REPO / "benchmarks" / "results" / f"{args.name}.json"
    atomic_write_text(out, json.dumps(result, indent=1))
    rows = [("cgF1", "cgf1"), ("cgF1@50", "cgf1_50"), ("IL_MCC", "il_mcc"), ("pmF1", "pmf1"),
            ("matched mask IoU", "mean_matched_iou"), ("recall", "recall")]
    if stage1_gt:
        md = [f"| held-out orchard (seed 777) | teacher | {args.student} student | after stage 1 only |",
              "|---|---|---|---|"]
        md += [f"| {name} | {_f(teacher_gt[k])} | {_f(student_gt[k])} | {_f(stage1_gt[k])} |" for name, k in rows]
    else:
        md = [f"| held-out orchard (seed 777) | teacher | {args.student} student |", "|---|---|---|"]
        md += [f"| {name} | {_f(teacher_gt[k])} | {_f(student_gt[k])} |" for name, k in rows]
    md += ["", f"student / teacher cgF1: {_f(ratio)}; distillation wall time {times['distill_s']:.0f} s "
           f"(cache + stages {args.stages} + report; {args.threads} threads, {platform.machine()})"]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def _overrides(pairs: list[str]) -> dict:
    """``["mask_mode=coarse", "mask_dim=32", "fusion_self_attention=false"]`` -> typed overrides (bool, int, float,
    else str)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
        elif value.lstrip("-").isdigit():
            out[key] = int(value)
        else:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def stage1_student(run: Path, student, name: str = "toy", overrides: dict | None = None):
    """The student as stage 1 left it (encoder trained, heads the teacher's): its last stage-1 checkpoint."""
    from sam3edge.distill.checkpoint import latest_checkpoint, load_checkpoint
    from sam3edge.distill.feature_loss import ImageEncoderStage
    from sam3edge.models.registry import create_student

    s1 = create_student(name, **(overrides or {}))
    load_checkpoint(latest_checkpoint(run / "stage1" / "checkpoints"), ImageEncoderStage(s1), None)
    s1.set_concepts(student.concepts)
    return s1.eval()


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
