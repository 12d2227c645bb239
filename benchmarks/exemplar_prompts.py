"""Exemplar prompts, teacher vs student, and a visual concept stored from one image.

    python benchmarks/exemplar_prompts.py      # the bundled teacher (it knows exemplars), ~11 min on 2 cores
    python benchmarks/exemplar_prompts.py --teacher runs/toy_teacher_ex/model     # another teacher

1. Distils the quickstart's student (``toy-fast``, the quickstart's images and steps) from ``--teacher`` with
   exemplar prompts (``distill --exemplars``: a found concept's prompt carries the teacher's own best box, with the
   phrase or alone, and the student learns the teacher's answer), then exports it (OpenVINO ``--precision``).
2. On held-out orchard sets (seeds ``--seeds``, never trained on), per prompt mode of
   :mod:`sam3edge.eval.prompt_modes` (text; text + 1 ground-truth exemplar; the exemplar alone; a negative
   exemplar on a false positive; a negative box narrowing "apple" to the other kinds): the teacher, the student in
   PyTorch and the student's bundle.
3. A concept from an example (``sam3edge concepts add``): for each one-category concept of a set, one image where
   it is present and one of its instances' box are stored in a copy of the bundle; on the set's other images that
   stored concept is compared with the phrase and with an exemplar box drawn on each image itself.

Writes ``benchmarks/results/<--out>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def stored_concept_figures(bundle: Path, annotations: Path, seed: int, work: Path) -> dict:
    """Section 3 of the module docstring on one set."""
    from sam3edge.data.coco import ConceptDataset
    from sam3edge.data.images import load_image
    from sam3edge.eval import evaluate
    from sam3edge.eval.predict import coco_results
    from sam3edge.eval.prompt_modes import segmenter_runner, single_category_phrases, subset_pairs, tight_box
    from sam3edge.runtime import Segmenter
    from sam3edge.runtime.exemplars import VISUAL
    from sam3edge.runtime.visual_concept import add_visual_concept

    data = ConceptDataset.load(annotations)
    copy = work / f"stored_{seed}.sam3edge"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy)
    rng = np.random.default_rng(seed)
    examples = {}
    for phrase in sorted(set(data.phrases) & single_category_phrases()):
        positives = [p for p in data.pairs if p.phrase == phrase and len(p.masks())]
        if len(positives) < 2:
            continue
        example = positives[int(rng.integers(len(positives)))]
        masks = example.masks()
        box = tight_box(masks[int(rng.integers(len(masks)))])
        add_visual_concept(copy, f"{phrase} [example]", load_image(data.image_path(example.file_name)), [box])
        examples[phrase] = example.id
    run = segmenter_runner(Segmenter.load(copy, threads=2))
    preds = {"stored": [], "text": [], "in_image": [], "text_pos": [], "stored_pos": []}
    ids, pos_ids = set(), set()
    for pair in data.pairs:
        if pair.phrase not in examples or pair.id == examples[pair.phrase]:
            continue
        image = load_image(data.image_path(pair.file_name))
        stored, text = run(image, f"{pair.phrase} [example]"), run(image, pair.phrase)
        preds["stored"] += coco_results(pair.id, *stored)
        preds["text"] += coco_results(pair.id, *text)
        ids.add(pair.id)
        gt = pair.masks()
        if len(gt):
            pos_ids.add(pair.id)
            box = tight_box(gt[int(rng.integers(len(gt)))])
            preds["in_image"] += coco_results(pair.id, *run(image, VISUAL, [box], [1]))
            preds["text_pos"] += coco_results(pair.id, *text)
            preds["stored_pos"] += coco_results(pair.id, *stored)
    base = json.loads(annotations.read_text())
    figures = {"concepts": sorted(examples), "pairs": len(ids), "positive_pairs": len(pos_ids)}
    for mode, p in preds.items():
        positive = mode in ("in_image", "text_pos", "stored_pos")
        path = work / f"gt_stored_{seed}_{mode}.json"
        path.write_text(json.dumps(subset_pairs(base, pos_ids if positive else ids)))
        agg = evaluate(path, p).to_dict()["aggregate"]
        figures[mode] = agg["pmf1"] if positive else agg["cgf1"]
    return figures


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, default=REPO / "sam3edge" / "teachers" / "orchard-toy",
                    help="a teacher that knows exemplar prompts (default: the bundled one)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "exemplar_prompts")
    ap.add_argument("--exemplars", type=float, default=0.3, help="distill --exemplars")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[4242, 9001])
    ap.add_argument("--n", type=int, default=40, help="scenes per held-out set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="exemplar_prompts")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sam3edge.data.orchard_dataset import write_orchard_dataset
    from sam3edge.distill.config import DistillConfig
    from sam3edge.distill.run import distill
    from sam3edge.eval.prompt_modes import (
        prompt_mode_figures,
        refine_cells,
        refine_figures,
        segmenter_runner,
        torch_runner,
    )
    from sam3edge.export.bundle import export_bundle
    from sam3edge.models.student_io import load_student
    from sam3edge.models.teacher import Sam3Teacher
    from sam3edge.quickstart import QuickstartConfig, _orchard_inputs
    from sam3edge.runtime import Segmenter

    t0 = time.time()
    qs = QuickstartConfig(out=args.work, threads=args.threads)
    images, _, concepts = _orchard_inputs(qs, progress=True)
    run = args.work / "run"
    distill(DistillConfig(teacher=str(args.teacher), images=images, concepts=concepts, student=qs.student,
                          out=str(run), stage1_steps=qs.steps, stage1_lr=qs.lr, steps=qs.stage2_steps, lr=qs.stage2_lr,
                          batch=4, pairs=4, holdout=0.05, threads=args.threads, cache_batch=8,
                          exemplars=args.exemplars), progress=True)
    bundle = args.work / f"student-openvino-{args.precision}.sam3edge"
    if not bundle.is_dir():
        export_bundle(run, bundle, "openvino", args.precision, progress=True)
    distill_s = time.time() - t0

    models = {"teacher (PyTorch)": torch_runner(Sam3Teacher.from_pretrained(args.teacher)),
              "student (PyTorch)": torch_runner(load_student(run / "student").eval()),
              f"student (OpenVINO {args.precision})": segmenter_runner(Segmenter.load(bundle, threads=args.threads))}
    modes, stored = {}, {}
    for seed in args.seeds:
        ann = args.work / f"heldout_{seed}" / "annotations.json"
        if not ann.is_file():
            write_orchard_dataset(ann.parent, n=args.n, seed=seed, size=224, progress=False)
        for name, model in models.items():
            modes.setdefault(name, {})[seed] = prompt_mode_figures(model, ann, seed, args.work / "eval")
            modes[name][seed]["refine"] = refine_figures(model, ann)
            print(name, seed, json.dumps(modes[name][seed]), flush=True)
        stored[seed] = stored_concept_figures(bundle, ann, seed, args.work)
        print("stored", seed, json.dumps(stored[seed]), flush=True)

    command = "python benchmarks/exemplar_prompts.py " + " ".join(argv if argv is not None else
                                                                    __import__("sys").argv[1:])
    teacher_name = _shown(args.teacher)
    result = {"command": command, "teacher": teacher_name, "exemplars": args.exemplars,
              "distill_and_export_s": round(distill_s, 1), "heldout_scenes": args.n, "modes": modes,
              "stored_concept": stored, "host": {"machine": platform.machine(), "torch": torch.__version__,
                                                 "threads": args.threads}}
    out = REPO / "benchmarks" / "results" / args.out
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    lines = [f"Exemplar prompts on held-out orchard sets ({args.n} scenes per seed; teacher `{teacher_name}`, "
             f"student `toy-fast` distilled with `--exemplars {args.exemplars}`): `{command}`", "",
             "| model | seed | text (cgF1) | text + 1 exemplar (cgF1) | ratio to teacher, text / text + 1 | "
             "text, one-category pairs (pmF1) | exemplar alone (pmF1) | negative exemplar: FPs removed / TPs lost |",
             "|---|---|---|---|---|---|---|---|"]
    teacher = modes["teacher (PyTorch)"]
    for name, per_seed in modes.items():
        for seed, f in per_seed.items():
            t, n = teacher[seed], f["negative_exemplar"]
            ratio = f"{f['text'] / t['text']:.0%} / {f['text+1'] / t['text+1']:.0%}" if t["text"] and t["text+1"] \
                else "-"
            lines.append(f"| {name} | {seed} | {f['text']:.3f} | {f['text+1']:.3f} | {ratio} | "
                         f"{f['text_on_visual_pairs']:.3f} | {f['visual']:.3f} | {n['removed']}/"
                         f"{n['false_positives']} / {n['tp_lost']}/{n['true_positives']} |")
    lines += ["", "A negative box narrowing \"apple\" (`refine_figures`: each apple kind of a pair in turn, a negative "
              "box on its largest instance; true instances found, phrase alone -> with the box; a model that follows "
              "negatives drops the boxed one and the others of its kind and keeps the other kinds):", "",
              "| model | seed | cases | boxed instance | other instances of its kind | instances of the other kinds |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {seed} | {refine_cells(f['refine'])} |" for name, per_seed in modes.items()
              for seed, f in per_seed.items()]
    lines += ["", "A concept stored from one example image (`concepts add`, the student's bundle) on the set's other "
              "images: cgF1 over all its pairs against the phrase; pmF1 over the pairs where it is present against "
              "the phrase and an exemplar box drawn on each image itself.", "",
              "| seed | concepts | pairs | stored (cgF1) | phrase (cgF1) | stored (pmF1) | phrase (pmF1) | "
              "exemplar in each image (pmF1) |", "|---|---|---|---|---|---|---|---|"]
    for seed, s in stored.items():
        lines.append(f"| {seed} | {', '.join(s['concepts'])} | {s['pairs']} | {s['stored']:.3f} | {s['text']:.3f} | "
                     f"{s['stored_pos']:.3f} | {s['text_pos']:.3f} | {s['in_image']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _shown(path: Path) -> str:
    """A path as the results show it: relative to the repository when inside it (no machine's home in the file)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
