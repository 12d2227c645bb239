"""Where an exemplar box helps or fails a SAM3 model, one box at a time, on held-out orchard sets.

    python benchmarks/exemplar_errors.py sam3edge/teachers/orchard-toy --seeds 4242,9001,7 --out exemplar_errors_bundled

Per held-out set (the sets and the random ground-truth box of each pair are those of
:mod:`sam3edge.eval.prompt_modes`, so the figures explain its cgF1 columns):

* **boxed instance**: how often the text prompt misses the instance the box is drawn on (no kept prediction at mask
  IoU >= 0.5), and how many of those the phrase + box recovers;
* **false positives** of text and of text + box, by kind: *duplicate* (IoU >= 0.5 with a true instance another
  prediction already took), *near miss* (0.1-0.5), *clear* (< 0.1);
* **clear false positives** of the text prompt (look-alikes or background): the score of the best one alone, then
  with a negative box on it, then with a positive box on the same spot. A model that learned negatives lowers it;
* **a negative box narrowing "apple"** (:func:`~sam3edge.eval.prompt_modes.refine_figures`): on a kind of apple
  the phrase rightly finds, the box should drop that instance and the others of its kind, and keep the other kinds.

Writes ``benchmarks/results/<--out>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def set_figures(run, annotations: Path, seed: int) -> dict:
    from sam3edge.data.coco import ConceptDataset
    from sam3edge.data.images import load_image
    from sam3edge.eval.prompt_modes import _iou, match_instances, tight_box

    data = ConceptDataset.load(annotations)
    rng = np.random.default_rng(seed)  # the same draws as prompt_mode_figures
    f = {"positive_pairs": 0, "boxed_missed_by_text": 0, "recovered_by_box": 0, "lost_by_box": 0,
         "fp_text": {"duplicate": 0, "near": 0, "clear": 0}, "fp_text_box": {"duplicate": 0, "near": 0, "clear": 0},
         "clear_fp_scores": []}
    for file_name in data.files:
        image = load_image(data.image_path(file_name))
        for pair in data.by_file[file_name]:
            gt = pair.masks()
            k = int(rng.integers(len(gt))) if len(gt) else None
            text = run(image, pair.phrase)
            if k is not None:
                with_box = run(image, pair.phrase, [tight_box(gt[k])], [1])
                (bt, kt), (bb, kb) = match_instances(*text[:2], gt), match_instances(*with_box[:2], gt)
                f["positive_pairs"] += 1
                f["boxed_missed_by_text"] += int(bt[k] < 0.5)
                f["recovered_by_box"] += int(bt[k] < 0.5 <= bb[k])
                f["lost_by_box"] += int(bb[k] < 0.5 <= bt[k])
                for name, kinds in (("fp_text", kt), ("fp_text_box", kb)):
                    f[name] = {n: f[name][n] + v for n, v in kinds.items()}
            masks, scores, boxes = text
            kept = np.flatnonzero(scores >= 0.5)
            top = _iou(masks[kept], gt).max(1) if len(gt) and len(kept) else np.zeros(len(kept))
            clear = kept[top < 0.1]
            if len(clear):
                w = clear[np.argmax(scores[clear])]
                after = []
                for label in (0, 1):
                    m, s, _ = run(image, pair.phrase, [list(boxes[w])], [label])
                    same = _iou(masks[[w]], m)[0] >= 0.5 if len(m) else np.zeros(0, bool)
                    after.append(round(float(s[same].max()) if same.any() else 0.0, 3))
                f["clear_fp_scores"].append({"phrase": pair.phrase, "text": round(float(scores[w]), 3),
                                             "negative_box": after[0], "positive_box": after[1]})
    return f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a SAM3 model directory (a teacher)")
    ap.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[4242, 9001, 7])
    ap.add_argument("--n", type=int, default=40, help="scenes per held-out set")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "exemplar_errors")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="exemplar_errors")
    args = ap.parse_args(argv)
    if not (args.model / "config.json").is_file():
        ap.error(f"{args.model}: no config.json there; give a SAM3 model directory")

    import torch

    from sam3edge.atomic import atomic_write_text
    from sam3edge.data.orchard_dataset import write_orchard_dataset
    from sam3edge.eval.prompt_modes import refine_cells, refine_figures, torch_runner
    from sam3edge.models.teacher import Sam3Teacher

    torch.set_num_threads(args.threads)
    teacher = Sam3Teacher.from_pretrained(args.model)
    run = torch_runner(teacher)
    report = {}
    for seed in args.seeds:
        ann = args.work / f"heldout_{seed}" / "annotations.json"
        if not ann.is_file():
            write_orchard_dataset(ann.parent, n=args.n, seed=seed, size=teacher.image_size, progress=False)
        report[seed] = set_figures(run, ann, seed)
        report[seed]["refine"] = refine_figures(run, ann)
        print(seed, json.dumps(report[seed]), flush=True)
    command = "python benchmarks/exemplar_errors.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = REPO / "benchmarks" / "results" / args.out
    atomic_write_text(out.with_suffix(".json"), json.dumps({"command": command, "seeds": report}, indent=1))
    lines = [f"Exemplar boxes one at a time (`{command}`; {args.n} held-out scenes per seed).", "",
             "| seed | positive pairs | boxed instance missed by text | recovered by the box | lost with the box | "
             "false positives, text: duplicate / near / clear | text + box: duplicate / near / clear | "
             "clear FPs: score text -> negative box / positive box |", "|---|---|---|---|---|---|---|---|"]
    for seed, f in report.items():
        a, b = f["fp_text"], f["fp_text_box"]
        fps = "; ".join(f"{c['text']:.2f} -> {c['negative_box']:.2f} / {c['positive_box']:.2f}"
                        for c in f["clear_fp_scores"]) or "-"
        lines.append(f"| {seed} | {f['positive_pairs']} | {f['boxed_missed_by_text']} | {f['recovered_by_box']} | "
                     f"{f['lost_by_box']} | {a['duplicate']} / {a['near']} / {a['clear']} | "
                     f"{b['duplicate']} / {b['near']} / {b['clear']} | {fps} |")
    lines += ["", "A negative box narrowing \"apple\" (each apple kind of a pair in turn, a negative box on its "
              "largest instance; true instances found, phrase alone -> with the box; a learned negative drops the "
              "boxed one and the others of its kind and keeps the other kinds):", "",
              "| seed | cases | boxed instance | other instances of its kind | instances of the other kinds |",
              "|---|---|---|---|---|"]
    lines += [f"| {seed} | {refine_cells(f['refine'])} |" for seed, f in report.items()]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
