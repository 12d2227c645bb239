"""Have a SAM3 model's queries separated instances, or collapsed onto the phrase's semantic mask?

    python benchmarks/query_diversity.py sam3edge/teachers/orchard-toy          # a save_pretrained dir
    python benchmarks/query_diversity.py runs/toy_teacher/checkpoints/step_0003750   # a training checkpoint

On the first N held-out orchard scenes (seed 777), for every present concept: the best IoU any query
reaches with each ground-truth instance ("oracle": can the queries express instances at all?), the IoU
of the top-n scored queries (does scoring pick them?) and how many distinct instances those top-n
queries cover (collapsed queries all cover the same one). This is how the toy teacher's query
collapse was diagnosed and its fix followed during training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_toy_teacher import EVAL_SEED, TOY_CONFIG  # noqa: E402
from sam3edge.data.orchard import ORCHARD_VOCABULARY, render_scene, scene_rng  # noqa: E402
from sam3edge.models.teacher import Sam3Teacher  # noqa: E402


def load(path: Path) -> Sam3Teacher:
    if (path / "config.json").is_file():
        return Sam3Teacher.from_pretrained(path)
    from safetensors.torch import load_file

    from sam3edge.models.sam3_load import build_sam3, load_tokenizer, tiny_sam3_config

    model = build_sam3(tiny_sam3_config(**TOY_CONFIG))
    state = {k.removeprefix("model."): v for k, v in load_file(path / "model.safetensors").items()}
    model.load_state_dict(state, strict=True)
    return Sam3Teacher(model.eval(), load_tokenizer(path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="save_pretrained directory or a trainer checkpoint directory")
    ap.add_argument("--n", type=int, default=12, help="held-out scenes")
    args = ap.parse_args(argv)
    teacher = load(args.model)
    size = teacher.image_size
    best, top, covered = [], [], []
    concepts = ORCHARD_VOCABULARY.concepts
    for i in range(args.n):
        scene = render_scene(scene_rng(EVAL_SEED, i), size)
        out = teacher([scene.image], [c.phrase for c in concepts])
        for p, c in enumerate(concepts):
            gt = torch.from_numpy(scene.masks(c.category_ids))
            if not len(gt):
                continue
            pred = F.interpolate(out.mask_logits[0, p][None].float(), size=gt.shape[-2:], mode="bilinear")[0] > 0
            inter = (pred[:, None] & gt[None]).flatten(2).sum(-1).float()
            iou = inter / (pred[:, None] | gt[None]).flatten(2).sum(-1).float().clamp(min=1)  # [Q, n]
            best += iou.max(0).values.tolist()
            order = out.scores[0, p].argsort(descending=True)[: len(gt)]
            top += iou[order].max(0).values.tolist()
            covered.append(len(set(iou[order].argmax(1).tolist())) / len(gt))
    best = np.array(best)
    result = {"model": str(args.model), "scenes": args.n, "instances": len(best),
              "oracle_iou_mean": round(float(best.mean()), 3),
              "oracle_iou_ge_0.5": round(float((best >= .5).mean()), 3),
              "oracle_iou_ge_0.7": round(float((best >= .7).mean()), 3),
              "top_n_iou_mean": round(float(np.mean(top)), 3),
              "distinct_instances_covered": round(float(np.mean(covered)), 3)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
