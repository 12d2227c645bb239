"""Stage 1 of the bundled toy teacher: a small transformers ``Sam3Model`` trained on the orchard domain's phrases.

    python benchmarks/train_toy_teacher.py --run-dir runs/toy_teacher --steps 2800

Trains from a fixed seed with the set-prediction trainer on ground truth rendered on the fly,
then evaluates on a held-out orchard set (a seed never used for training) with the SA-Co cgF1
metric, saves the teacher in ``save_pretrained`` layout (fp16) to ``--out`` (default ``runs/toy_teacher_text``)
and writes its figures to ``benchmarks/results/toy_teacher.{json,md}``. Resumable: run the same
command again after an interruption.

This phrase-trained teacher was the bundled ``orchard-toy`` until 2026-12-04 (git ``470c78f``); the bundled one is
now this teacher fine-tuned with exemplar prompts, stages 2-4 in ``benchmarks/toy_teacher_exemplars.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sam3edge.atomic import atomic_write_text
from sam3edge.data.coco import ConceptDataset
from sam3edge.data.orchard_dataset import write_orchard_dataset
from sam3edge.distill.init import (
    init_rpb_locality,
    init_sam3_reference_grid,
    init_vit_position_sincos,
    xavier_init_heads,
)
from sam3edge.distill.losses import LossWeights, SetCriterion
from sam3edge.distill.scene_batches import OrchardBatches
from sam3edge.distill.trainer import TrainConfig, Trainer
from sam3edge.models.sam3_heads import Sam3PairModel
from sam3edge.models.sam3_load import build_sam3, load_tokenizer, save_sam3, tiny_sam3_config
from sam3edge.models.teacher import Sam3Teacher

REPO = Path(__file__).resolve().parents[1]
TOY_CONFIG = dict(image_size=224, vision_hidden=128, vision_layers=4, text_hidden=64, text_layers=2, hidden=64,
                  num_queries=16, encoder_layers=2, decoder_layers=3, heads=4)
TRAIN_SEED, EVAL_SEED = 1, 777


def evaluate_teacher(model_dir_or_teacher, data_dir: Path, n: int) -> dict:
    from sam3edge.eval import evaluate
    from sam3edge.eval.predict import predict_dataset

    ann = data_dir / "annotations.json"
    if not ann.is_file():
        write_orchard_dataset(data_dir, n=n, seed=EVAL_SEED, size=TOY_CONFIG["image_size"])
    teacher = model_dir_or_teacher if isinstance(model_dir_or_teacher, Sam3Teacher) else \
        Sam3Teacher.from_pretrained(model_dir_or_teacher)
    preds = predict_dataset(teacher, ConceptDataset.load(ann))
    return evaluate(ann, preds).to_dict()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=REPO / "runs" / "toy_teacher")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "toy_teacher_text")
    ap.add_argument("--steps", type=int, default=9000)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--images", type=int, default=2, help="images per step")
    ap.add_argument("--pairs", type=int, default=4, help="phrases asked per image per step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds (resumable)")
    ap.add_argument("--eval-n", type=int, default=100, help="held-out scenes for the final evaluation")
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = tiny_sam3_config(**TOY_CONFIG)
    model = build_sam3(config, seed=0)
    init_sam3_reference_grid(model)
    xavier_init_heads(model)
    init_rpb_locality(model)
    init_vit_position_sincos(model)
    tokenizer = load_tokenizer(args.run_dir)  # the packaged CLIP BPE tokenizer
    g = TOY_CONFIG["image_size"] // 14 * 4
    batches = OrchardBatches(tokenizer, seed=TRAIN_SEED, images_per_batch=args.images, pairs_per_image=args.pairs,
                             image_size=TOY_CONFIG["image_size"], mask_size=(g, g))
    cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup=300, weight_decay=0.05, grad_clip=1.0, log_every=20,
                      ckpt_every=250, seed=0)
    trainer = Trainer(Sam3PairModel(model), SetCriterion(LossWeights()), batches, cfg, args.run_dir)
    t0 = time.time()
    trainer.fit(resume=not args.no_resume, time_limit_s=args.time_limit)
    train_s = time.time() - t0
    if trainer.step < cfg.steps:
        print(f"stopped at step {trainer.step}/{cfg.steps} (time limit); run again to resume")
        return 0

    save_sam3(model.eval(), args.out, dtype=torch.float16)
    metrics = evaluate_teacher(args.out, args.run_dir / "heldout", args.eval_n)
    n_params = sum(p.numel() for p in model.parameters())
    size_mb = sum(f.stat().st_size for f in args.out.glob("*.safetensors")) / 2**20
    result = {
        "command": "python benchmarks/train_toy_teacher.py " + " ".join(argv or []),
        "config": TOY_CONFIG, "train": {"steps": cfg.steps, "lr": cfg.lr, "images_per_step": args.images,
                                        "pairs_per_image": args.pairs, "seed": TRAIN_SEED,
                                        "wall_s_this_invocation": round(train_s, 1)},
        "parameters": n_params, "weights_mb_fp16": round(size_mb, 2),
        "heldout": {"seed": EVAL_SEED, "n_images": args.eval_n}, "metrics": metrics,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()},
    }
    out = REPO / "benchmarks" / "results" / "toy_teacher.json"
    atomic_write_text(out, json.dumps(result, indent=1))
    agg = metrics["aggregate"]
    print(json.dumps({k: agg.get(k) for k in ("cgf1", "cgf1_50", "cgf1_75", "mean_matched_iou", "il_mcc", "pmf1")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
