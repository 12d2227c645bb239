"""Teach the toy teacher exemplar prompts, and measure what they do on held-out orchard sets.

    python benchmarks/toy_teacher_exemplars.py --run-dir runs/toy_teacher_ex --steps 1500          # fine-tune + eval
    python benchmarks/toy_teacher_exemplars.py --eval-only sam3edge/teachers/orchard-toy --out NAME  # eval a model

SAM3 trains with a prompt mix: text only, text + exemplar boxes, boxes alone (phrase "visual"), with negative
boxes. A teacher trained on phrases only (``benchmarks/train_toy_teacher.py``) moves its scores by ~0.01 for a box.
Here a teacher is fine-tuned from ``--init`` on the orchard stream with that mix
(:class:`~sam3edge.distill.scene_batches.OrchardBatches` ``prompt_mix``), the same set-prediction loss on ground
truth, then evaluated on held-out sets (seeds the training stream never renders) per prompt mode
(:mod:`sam3edge.eval.prompt_modes`: text; text + 1 ground-truth exemplar; the exemplar alone, on one-category
concepts; a negative exemplar on the text prompt's best false positive).

The bundled ``orchard-toy`` teacher is stage 1 (phrases, ``train_toy_teacher.py --out runs/toy_teacher_text``, or
``git show 470c78f:sam3edge/teachers/orchard-toy/model.safetensors``) followed by five runs of this script
(figures: ``benchmarks/results/toy_teacher_exemplars_refine2.md``; ~15-20 min a 3000-step stage on 2 cores;
stage 4 was the bundled teacher from git f2f7a86 to 2026-12-04's tenth session, stage 6 until its eleventh) and
stage 7, its text encoder alone taught that "a basket" and "baskets" mean "basket"
(``toy_teacher_paraphrases.py``; figures: ``toy_teacher_exemplars_stage7.md``)::

    COMMON="--mix 0.2,0.6,0.2 --lr-mult geometry_encoder=10 --hard-negatives 1 --interactive 1 --no-baseline"
    python benchmarks/toy_teacher_exemplars.py --init runs/toy_teacher_text --run-dir runs/toy_teacher_int2 \
        --steps 5000 $COMMON                        # stage 2: boxes on the phrase's own errors
    python benchmarks/toy_teacher_exemplars.py --init runs/toy_teacher_int2/model --run-dir runs/toy_teacher_boxed5 \
        --steps 3000 --boxed-weight 5 $COMMON       # stage 3: a box's own instance weighs 5x (ran at 9b7b0b4,
                                                    # before duplicates on a positive box were weighted too)
    python benchmarks/toy_teacher_exemplars.py --init runs/toy_teacher_boxed5/model \
        --run-dir runs/toy_teacher_boxed5d --steps 3000 --boxed-weight 5 $COMMON   # stage 4
    python benchmarks/toy_teacher_exemplars.py --init runs/toy_teacher_boxed5d/model --run-dir runs/toy_teacher_refine \
        --steps 3000 --boxed-weight 5 --refine 0.8 --negative-threshold 0.15 $COMMON --interactive 0.5
                                                    # stage 5: negative boxes that narrow "apple"
    python benchmarks/toy_teacher_exemplars.py --init runs/toy_teacher_refine/model --run-dir runs/toy_teacher_refine2 \
        --steps 2000 --boxed-weight 5 --refine 0.8 --publish $COMMON      # stage 6: interactive boxes at rate 1 again
    python benchmarks/toy_teacher_paraphrases.py --init runs/toy_teacher_refine2/model \
        --run-dir runs/toy_teacher_para --steps 1500 --publish                      # stage 7 (text encoder only)

Writes ``benchmarks/results/<--out>.{json,md}``; the fine-tuned model goes to ``RUN_DIR/model`` (fp16) and, with
``--publish``, its weights replace the bundled teacher's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from sam3edge.atomic import atomic_write_text
from sam3edge.models.bundled import resolve_model

REPO = Path(__file__).resolve().parents[1]
TRAIN_SEED = 1  # the bundled teacher's training stream; its held-out sets use other seeds
EVAL_SEEDS = (4242, 9001)
MIX = (0.5, 0.3, 0.2)


def fine_tune(args) -> Path:
    from sam3edge.distill.interactive import InteractivePairModel
    from sam3edge.distill.losses import LossWeights, SetCriterion
    from sam3edge.distill.scene_batches import OrchardBatches
    from sam3edge.distill.trainer import TrainConfig, Trainer
    from sam3edge.models.sam3_heads import Sam3PairModel
    from sam3edge.models.sam3_load import load_sam3_model, load_tokenizer, save_sam3

    source = resolve_model("orchard-toy")
    model = load_sam3_model(args.init or source, dtype=torch.float32).train()
    size = int(model.config.vision_config.backbone_config.image_size)
    g = size // 14 * 4
    batches = OrchardBatches(load_tokenizer(source), seed=TRAIN_SEED + 1000, images_per_batch=args.images,
                             pairs_per_image=args.pairs, image_size=size, mask_size=(g, g), prompt_mix=args.mix,
                             hard_negatives=args.hard_negatives, negative_only=args.negative_only,
                             refine=args.refine)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup=100, weight_decay=0.05, grad_clip=1.0, log_every=20,
                      ckpt_every=250, seed=0, lr_mult={f"model.{k}": v for k, v in args.lr_mult.items()})
    pair_model = (InteractivePairModel(model, rate=args.interactive, negative_threshold=args.negative_threshold)
                  if args.interactive else Sam3PairModel(model))
    trainer = Trainer(pair_model, SetCriterion(LossWeights(boxed=args.boxed_weight)), batches, cfg, args.run_dir)
    trainer.fit(resume=True)
    if args.interactive:  # how many pairs the phrase's errors re-boxed: negatives are the rare kind
        args.error_boxes = dict(pair_model.total_counts)
        print("boxes on the phrase's errors (this process):", json.dumps(args.error_boxes), flush=True)
    out = args.run_dir / "model"
    save_sam3(model.eval(), out, dtype=torch.float16)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (Path(source) / name).is_file() and not (out / name).is_file():
            (out / name).write_bytes((Path(source) / name).read_bytes())
    return out


def evaluate_modes(model_dir: Path, work: Path, n: int, seeds=EVAL_SEEDS) -> dict:
    """Per held-out seed, the prompt modes of :mod:`sam3edge.eval.prompt_modes` for the teacher in ``model_dir``."""
    from sam3edge.data.orchard_dataset import write_orchard_dataset
    from sam3edge.eval.prompt_modes import prompt_mode_figures, torch_runner
    from sam3edge.models.teacher import Sam3Teacher

    teacher = Sam3Teacher.from_pretrained(model_dir)
    report = {}
    for seed in seeds:
        ann = work / f"heldout_{seed}" / "annotations.json"
        if not ann.is_file():
            write_orchard_dataset(ann.parent, n=n, seed=seed, size=teacher.image_size, progress=False)
        report[seed] = prompt_mode_figures(torch_runner(teacher), ann, seed, work)
        print(seed, json.dumps(report[seed]), flush=True)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=REPO / "runs" / "toy_teacher_ex")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-mult", type=_lr_mult, default={}, metavar="MODULE=X[,MODULE=X]",
                    help="learning-rate multipliers of Sam3Model submodules, e.g. geometry_encoder=10 (the bundled "
                         "teacher never trained its geometry encoder)")
    ap.add_argument("--mix", type=_mix, default=MIX, metavar="T,TB,B",
                    help=f"prompt mix: text / text + boxes / boxes alone (default {','.join(map(str, MIX))})")
    ap.add_argument("--hard-negatives", type=float, default=0.0, metavar="P",
                    help="share of negative boxes put on a look-alike instance when there is one (OrchardBatches)")
    ap.add_argument("--negative-only", type=float, default=0.0, metavar="P",
                    help="share of text + exemplar pairs of present concepts given a negative box alone "
                         "(OrchardBatches)")
    ap.add_argument("--refine", type=float, default=0.0, metavar="P",
                    help="share of text + exemplar pairs of a broad concept (apple) given a negative box on one kind "
                         "that leaves the targets with every instance of that kind (OrchardBatches refine)")
    ap.add_argument("--interactive", type=float, default=0.0, metavar="P",
                    help="share of text + exemplar pairs whose boxes go on the phrase's own error instead "
                         "(sam3edge.distill.interactive: SAM3's interactive exemplar training)")
    ap.add_argument("--negative-threshold", type=float, default=0.5, metavar="S",
                    help="with --interactive: a prediction off every target from this score on may get the negative "
                         "box (default 0.5, clear false positives only; lower mines near ones)")
    ap.add_argument("--boxed-weight", type=_positive, default=1.0, metavar="W",
                    help="loss weight of an exemplar box's own instance (sam3edge.distill.losses.LossWeights boxed)")
    ap.add_argument("--init", type=Path, default=None, metavar="MODEL",
                    help="start from this model directory (an earlier fine-tune's RUN_DIR/model) instead of the "
                         "bundled weights")
    ap.add_argument("--publish", action="store_true",
                    help="copy the fine-tuned weights over the bundled teacher's (sam3edge/teachers/orchard-toy)")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--n", type=int, default=40, help="scenes per held-out set")
    ap.add_argument("--seeds", type=lambda t: tuple(int(v) for v in t.split(",")), default=EVAL_SEEDS,
                    metavar="S[,S]", help=f"held-out set seeds (default {','.join(map(str, EVAL_SEEDS))}; the "
                    f"training stream is seed {TRAIN_SEED + 1000})")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="also evaluate the starting point (--init, or the bundled teacher)")
    ap.add_argument("--eval-only", type=Path, default=None, help="evaluate this model directory, train nothing")
    ap.add_argument("--out", default="toy_teacher_exemplars")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    model_dir = args.eval_only or fine_tune(args)
    train_s = time.time() - t0
    start = args.init or Path(resolve_model("orchard-toy"))
    before = evaluate_modes(start, args.run_dir, args.n, args.seeds) if args.baseline and not args.eval_only else None
    if args.publish and not args.eval_only:
        publish(model_dir)
    after = evaluate_modes(model_dir, args.run_dir, args.n, args.seeds)
    args_given = argv if argv is not None else sys.argv[1:]
    result = {"command": "python benchmarks/toy_teacher_exemplars.py " + " ".join(args_given),
              "model": str(model_dir), "steps": None if args.eval_only else args.steps, "prompt_mix": args.mix,
              "hard_negatives": args.hard_negatives, "negative_only": args.negative_only, "refine": args.refine,
              "interactive": args.interactive, "negative_threshold": args.negative_threshold,
              "error_boxes": getattr(args, "error_boxes", None),
              "boxed_weight": args.boxed_weight, "init": None if args.init is None else str(args.init),
              "lr": args.lr, "lr_mult": args.lr_mult,
              "train_s": round(train_s, 1),
              "heldout_scenes": args.n, "seeds": args.seeds,
              "before": before, "after": after, "host": {"machine": platform.machine(), "torch": torch.__version__}}
    out = REPO / "benchmarks" / "results" / args.out
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1, default=str))
    lines = [f"Toy teacher and exemplar prompts: `{result['command']}`. cgF1 on held-out orchard sets ({args.n} "
             f"scenes per seed, {teacher_note(args)}).", "",
             "| model | seed | text (cgF1) | text + 1 exemplar (cgF1) | text, single-category pairs (pmF1) | "
             "exemplar only, 'visual' (pmF1) | "
             "negative exemplar: FPs removed / TPs lost | of those FPs: near misses of a target; clear ones "
             "removed |", "|---|---|---|---|---|---|---|---|"]
    tuned = f"model {args.eval_only}" if args.eval_only else "fine-tuned with the prompt mix"
    for name, rep in ((f"start: {start}", before), (tuned, after)):
        for seed, f in (rep or {}).items():
            n = f["negative_exemplar"]
            lines.append(f"| {name} | {seed} | {f['text']:.3f} | {f['text+1']:.3f} | {f['text_on_visual_pairs']:.3f} | "
                         f"{f['visual']:.3f} | {n['removed']}/{n['false_positives']} / "
                         f"{n['tp_lost']}/{n['true_positives']} | {n.get('near_misses', '-')}; "
                         f"{n.get('clear_removed', '-')}/{n['false_positives'] - n.get('near_misses', 0)} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def publish(model_dir: Path) -> None:
    """The fine-tuned weights become the bundled teacher's (same config and tokenizer; written atomically)."""
    import shutil

    from sam3edge.atomic import atomic_write

    bundled = Path(resolve_model("orchard-toy"))
    mine, theirs = (_architecture(json.loads((d / "config.json").read_text())) for d in (model_dir, bundled))
    if mine != theirs:
        raise SystemExit(f"--publish: {model_dir / 'config.json'} is not the bundled teacher's architecture "
                         f"({bundled / 'config.json'}); the bundled weights are left as they are")
    with open(model_dir / "model.safetensors", "rb") as src:
        atomic_write(bundled / "model.safetensors", lambda f: shutil.copyfileobj(src, f))
    print(f"published {model_dir / 'model.safetensors'} -> {bundled}")


def _architecture(config):
    """A config without the fields that do not change the weights' layout (dtype, transformers version)."""
    if isinstance(config, dict):
        return {k: _architecture(v) for k, v in config.items() if k not in ("dtype", "torch_dtype",
                                                                            "transformers_version")}
    return config


def teacher_note(args) -> str:
    if args.eval_only:
        return f"model {args.eval_only}"
    mult = "".join(f", {k} x{v:g}" for k, v in args.lr_mult.items())
    mult += f", hard negatives {args.hard_negatives:g}" if args.hard_negatives else ""
    mult += f", boxes on the phrase's errors {args.interactive:g}" if args.interactive else ""
    mult += (f", negatives mined from score {args.negative_threshold:g}" if args.interactive and
             args.negative_threshold != 0.5 else "")
    mult += f", box's own instance weighted x{args.boxed_weight:g}" if args.boxed_weight != 1 else ""
    mult += f", negative box alone {args.negative_only:g}" if args.negative_only else ""
    mult += f", negative box narrows a broad concept {args.refine:g}" if args.refine else ""
    start = f"from {args.init}" if args.init else "from the bundled weights"
    return (f"fine-tuned {args.steps} steps at lr {args.lr}{mult} {start} on the orchard stream of "
            f"seed {TRAIN_SEED + 1000}, prompt mix text / text + boxes / boxes alone = {tuple(args.mix)}")


def _lr_mult(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--lr-mult: {item!r} is not MODULE=NUMBER") from None
        if not name.strip() or out[name.strip()] <= 0:
            raise argparse.ArgumentTypeError(f"--lr-mult: {item!r} needs a module name and a positive number")
    return out


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _mix(text: str) -> tuple[float, float, float]:
    try:
        mix = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix: {text!r} is not three numbers T,TB,B") from None
    if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
        raise argparse.ArgumentTypeError(f"--mix: {text!r} needs three non-negative weights, not all 0")
    return mix


if __name__ == "__main__":
    raise SystemExit(main())
