"""Teach the bundled toy teacher exemplar prompts, and measure what they do on held-out orchard sets.

    python benchmarks/toy_teacher_exemplars.py --run-dir runs/toy_teacher_ex --steps 1500          # fine-tune + eval
    python benchmarks/toy_teacher_exemplars.py --eval-only sam3edge/teachers/orchard-toy --out NAME  # eval a model

SAM3 trains with a prompt mix: text only, text + exemplar boxes, boxes alone (phrase "visual"), with negative
boxes. The bundled teacher (``benchmarks/train_toy_teacher.py``) saw text only, so boxes move its scores by
~0.01. Here it is fine-tuned from its own weights on the orchard stream with that mix
(:class:`~sam3edge.distill.scene_batches.OrchardBatches` ``prompt_mix``), the same set-prediction loss on ground
truth, then evaluated on held-out sets (seeds the training stream never renders) per prompt mode:

* text: the phrase alone (SA-Co cgF1, as ``sam3edge eval``);
* text + 1 exemplar: the phrase and one ground-truth box of a present concept, drawn at random (SAM3's
  "1 exemplar" setting; absent concepts keep the phrase alone);
* exemplars only: "visual" and that box, on concepts of one category (a box on a ripe apple does not say
  "apples"); text only on the same pairs beside it. These pairs are all positive (a box sits on an instance),
  where cgF1's image-level MCC is 0 by definition, so the two are compared by pmF1;
* negative exemplar: for each pair, the text-only prediction's best-scoring false positive (IoU < 0.5 with every
  ground-truth instance) gets a negative box; how many such false positives fall below 0.5, and how many true
  positives do as a side effect.

Writes ``benchmarks/results/<--out>.{json,md}``; the fine-tuned model goes to ``RUN_DIR/model`` (fp16).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sam3edge.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
TRAIN_SEED = 1  # the bundled teacher's training stream; its held-out sets use other seeds
EVAL_SEEDS = (4242, 9001)
MIX = (0.5, 0.3, 0.2)


def fine_tune(args) -> Path:
    from sam3edge.distill.losses import LossWeights, SetCriterion
    from sam3edge.distill.scene_batches import OrchardBatches
    from sam3edge.distill.trainer import TrainConfig, Trainer
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.sam3_heads import Sam3PairModel
    from sam3edge.models.sam3_load import load_sam3_model, load_tokenizer, save_sam3

    source = resolve_model("orchard-toy")
    model = load_sam3_model(source, dtype=torch.float32).train()
    size = int(model.config.vision_config.backbone_config.image_size)
    g = size // 14 * 4
    batches = OrchardBatches(load_tokenizer(source), seed=TRAIN_SEED + 1000, images_per_batch=args.images,
                             pairs_per_image=args.pairs, image_size=size, mask_size=(g, g), prompt_mix=MIX)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup=100, weight_decay=0.05, grad_clip=1.0, log_every=20,
                      ckpt_every=250, seed=0)
    trainer = Trainer(Sam3PairModel(model), SetCriterion(LossWeights()), batches, cfg, args.run_dir)
    trainer.fit(resume=True)
    out = args.run_dir / "model"
    save_sam3(model.eval(), out, dtype=torch.float16)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (Path(source) / name).is_file() and not (out / name).is_file():
            (out / name).write_bytes((Path(source) / name).read_bytes())
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float32), b.reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _cxcywh(box_xyxy, h: int, w: int) -> list[float]:
    x0, y0, x1, y1 = box_xyxy
    return [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]


def _tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def evaluate_modes(model_dir: Path, work: Path, n: int) -> dict:
    from sam3edge.data.coco import ConceptDataset, encode_mask
    from sam3edge.data.images import load_image
    from sam3edge.data.orchard import ORCHARD_VOCABULARY
    from sam3edge.data.orchard_dataset import write_orchard_dataset
    from sam3edge.eval import evaluate
    from sam3edge.models.teacher import Sam3Teacher

    teacher = Sam3Teacher.from_pretrained(model_dir)
    one_category = {p for c in ORCHARD_VOCABULARY.concepts if len(c.category_ids) == 1 for p in (c.phrase, *c.synonyms)}
    report = {}
    for seed in EVAL_SEEDS:
        ann = work / f"heldout_{seed}" / "annotations.json"
        if not ann.is_file():
            write_orchard_dataset(ann.parent, n=n, seed=seed, size=teacher.image_size, progress=False)
        data = ConceptDataset.load(ann)
        rng = np.random.default_rng(seed)
        preds = {m: [] for m in ("text", "text+1", "visual", "text_on_visual_pairs")}
        visual_ids, neg = set(), {"false_positives": 0, "removed": 0, "true_positives": 0, "tp_lost": 0}
        for file_name in data.files:
            image = load_image(data.image_path(file_name))
            h, w = image.shape[:2]
            for pair in data.by_file[file_name]:
                gt = pair.masks()
                box = _tight_box(gt[int(rng.integers(len(gt)))]) if len(gt) else None

                def run(phrase, boxes=None, labels=None, image=image, h=h, w=w):
                    kw = {}
                    if boxes:
                        kw = {"input_boxes": torch.tensor([[_cxcywh(b, h, w) for b in boxes]]),
                              "input_boxes_labels": torch.tensor([labels])}
                    with torch.no_grad():
                        out = teacher([image], [phrase], **kw)
                    inst = out.instances(0, 0, score_threshold=0.05)
                    return [np.asarray(inst[k].cpu().float() if hasattr(inst[k], "cpu") else inst[k])
                            for k in ("masks", "scores", "boxes")]

                def results(masks, scores, boxes, pair=pair):
                    return [{"image_id": pair.id, "category_id": 1, "segmentation": encode_mask(m.astype(bool)),
                             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                             "score": float(s)} for m, s, b in zip(masks, scores, boxes)]

                text = run(pair.phrase)
                preds["text"] += results(*text)
                preds["text+1"] += results(*(run(pair.phrase, [box], [1]) if box else text))
                if box and pair.phrase in one_category:
                    visual_ids.add(pair.id)
                    preds["visual"] += results(*run("visual", [box], [1]))
                    preds["text_on_visual_pairs"] += results(*text)
                masks, scores, boxes = text
                kept = scores >= 0.5
                if kept.any():
                    iou = _iou(masks[kept] > 0.5, gt).max(1) if len(gt) else np.zeros(int(kept.sum()))
                    fp = np.flatnonzero(kept)[iou < 0.5]
                    tp = np.flatnonzero(kept)[iou >= 0.5]
                    if len(fp):
                        worst = fp[np.argmax(scores[fp])]
                        after = run(pair.phrase, [list(boxes[worst])], [0])
                        still = after[1] >= 0.5
                        match = _iou(masks[[worst]] > 0.5, after[0][still] > 0.5) if still.any() else np.zeros((1, 0))
                        neg["false_positives"] += 1
                        neg["removed"] += int(not (match >= 0.5).any())
                        if len(tp):
                            tp_after = _iou(masks[tp] > 0.5, after[0][still] > 0.5) if still.any() else \
                                np.zeros((len(tp), 0))
                            neg["true_positives"] += len(tp)
                            neg["tp_lost"] += int((tp_after.max(1, initial=0) < 0.5).sum())
        figures = {}
        for mode, p in preds.items():
            ids = visual_ids if mode in ("visual", "text_on_visual_pairs") else None
            gt_data = json.loads(ann.read_text())
            if ids is not None:
                gt_data = _subset(gt_data, ids)
            sub = work / f"gt_{seed}_{mode}.json"
            sub.write_text(json.dumps(gt_data))
            agg = evaluate(sub, p).to_dict()["aggregate"]
            # the single-category subset holds present concepts only (a box sits on an instance): image-level MCC,
            # and so cgF1, is 0 there by definition; those two modes are compared by pmF1 (positive micro F1)
            figures[mode] = agg["pmf1"] if ids is not None else agg["cgf1"]
        figures["visual_pairs"] = len(visual_ids)
        figures["negative_exemplar"] = neg
        report[seed] = figures
        print(seed, json.dumps(figures), flush=True)
    return report


def _subset(data: dict, ids: set) -> dict:
    """An SA-Co annotation dict restricted to the pairs (``images`` entries) ``ids``."""
    out = dict(data)
    out["images"] = [im for im in data["images"] if im["id"] in ids]
    out["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=REPO / "runs" / "toy_teacher_ex")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--n", type=int, default=40, help="scenes per held-out set")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--eval-only", type=Path, default=None, help="evaluate this model directory, train nothing")
    ap.add_argument("--out", default="toy_teacher_exemplars")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    model_dir = args.eval_only or fine_tune(args)
    train_s = time.time() - t0
    before = evaluate_modes(Path(__import__("sam3edge.models.bundled", fromlist=["x"]).resolve_model("orchard-toy")),
                            args.run_dir, args.n) if not args.eval_only else None
    after = evaluate_modes(model_dir, args.run_dir, args.n)
    args_given = argv if argv is not None else __import__("sys").argv[1:]
    result = {"command": "python benchmarks/toy_teacher_exemplars.py " + " ".join(args_given),
              "model": str(model_dir), "steps": None if args.eval_only else args.steps, "prompt_mix": MIX,
              "lr": args.lr, "train_s": round(train_s, 1), "heldout_scenes": args.n, "seeds": EVAL_SEEDS,
              "before": before, "after": after, "host": {"machine": platform.machine(), "torch": torch.__version__}}
    out = REPO / "benchmarks" / "results" / args.out
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1, default=str))
    lines = [f"Toy teacher and exemplar prompts: `{result['command']}`. cgF1 on held-out orchard sets ({args.n} "
             f"scenes per seed, {teacher_note(args)}).", "",
             "| model | seed | text (cgF1) | text + 1 exemplar (cgF1) | text, single-category pairs (pmF1) | "
             "exemplar only, 'visual' (pmF1) | "
             "negative exemplar: FPs removed / TPs lost |", "|---|---|---|---|---|---|---|"]
    for name, rep in (("bundled (text-trained)", before), ("fine-tuned with the prompt mix", after)):
        for seed, f in (rep or {}).items():
            n = f["negative_exemplar"]
            lines.append(f"| {name} | {seed} | {f['text']:.3f} | {f['text+1']:.3f} | {f['text_on_visual_pairs']:.3f} | "
                         f"{f['visual']:.3f} | {n['removed']}/{n['false_positives']} / "
                         f"{n['tp_lost']}/{n['true_positives']} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def teacher_note(args) -> str:
    if args.eval_only:
        return f"model {args.eval_only}"
    return (f"fine-tuned {args.steps} steps at lr {args.lr} from the bundled weights on the orchard stream of seed "
            f"{TRAIN_SEED + 1000}, prompt mix text / text + boxes / boxes alone = {MIX}")


if __name__ == "__main__":
    raise SystemExit(main())
