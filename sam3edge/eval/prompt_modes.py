"""cgF1 per prompt mode on an SA-Co style set: text, text + 1 exemplar, exemplars alone, negative exemplars,
and a visual concept stored from one image.

Any model is a ``run(image, phrase, boxes=None, labels=None) -> (masks bool [n, H, W], scores [n], boxes [n, 4])``
(pixels of ``image``, every instance scoring >= 0.05); :func:`torch_runner` adapts a
:class:`~sam3edge.models.teacher.Sam3Teacher` or a :class:`~sam3edge.models.student.Sam3Student`,
:func:`segmenter_runner` a runtime :class:`~sam3edge.runtime.segmenter.Segmenter`. Modes
(:func:`prompt_mode_figures`):

* ``text``: the phrase alone (cgF1, as ``sam3edge eval``);
* ``text+1``: the phrase and one ground-truth box of a present concept, drawn at random (SAM3's "1 exemplar"
  setting; absent concepts keep the phrase alone);
* ``visual`` / ``text_on_visual_pairs``: "visual" and that box, on present concepts of one category (a box on a
  ripe apple does not say "apples"), and the phrase alone on the same pairs. These pairs are all positive, where
  cgF1's image-level MCC is 0 by definition, so both are pmF1 (positive micro F1);
* ``negative_exemplar``: each pair's best-scoring false positive of the text prompt (IoU < 0.5 with every
  ground-truth instance) gets a negative box; how many of those disappear (no kept instance at IoU >= 0.5 with it
  any more) and how many true positives are lost with them; ``near_misses``: how many of those false positives
  overlap a true instance of the prompt (IoU >= 0.1: a target found with a poor mask, where a negative box
  contradicts the target), ``clear_removed``: removals among the others;
* :func:`refine_figures`: a negative box narrowing a broad concept ("apple" but not this kind): the boxed
  instance and the others of its kind should go, the other kinds stay.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sam3edge.runtime.exemplars import VISUAL

__all__ = ["match_instances", "prompt_mode_figures", "refine_cells", "refine_figures", "segmenter_runner",
           "single_category_phrases", "subset_pairs", "tight_box", "torch_runner"]


def torch_runner(model) -> Callable:
    """``run`` of a model with the teacher's call (``model([image], [phrase], input_boxes=, input_boxes_labels=)``)."""
    import torch

    from sam3edge.eval.predict import _numpy

    @torch.no_grad()
    def run(image, phrase, boxes=None, labels=None):
        h, w = image.shape[:2]
        kw = {}
        if boxes:
            kw = {"input_boxes": torch.tensor([[_cxcywh(b, h, w) for b in boxes]], dtype=torch.float32),
                  "input_boxes_labels": torch.tensor([list(labels)])}
        inst = model([image], [phrase], **kw).instances(0, 0, score_threshold=0.05)
        return tuple(_numpy(inst[k]) for k in ("masks", "scores", "boxes"))

    return run


def segmenter_runner(seg) -> Callable:
    """``run`` of a runtime Segmenter (its concepts are set per call)."""

    def run(image, phrase, boxes=None, labels=None):
        if seg.concepts != [phrase]:
            seg.set_concepts([phrase])
        ex = [(b, bool(lab)) for b, lab in zip(boxes, labels)] if boxes else None
        inst = seg.segment(image, score_threshold=0.05, exemplars=ex)
        return inst.masks, np.asarray(inst.scores), np.asarray(inst.boxes)

    return run


def _cxcywh(box_xyxy, h: int, w: int) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    return [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]


def tight_box(mask: np.ndarray) -> list[float]:
    """Pixel-edge xyxy box of a boolean mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float32), b.reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def single_category_phrases() -> set[str]:
    """Orchard phrases (and synonyms) that name one category: a box on one of them says which."""
    from sam3edge.data.orchard import ORCHARD_VOCABULARY

    return {p for c in ORCHARD_VOCABULARY.concepts if len(c.category_ids) == 1 for p in (c.phrase, *c.synonyms)}


def prompt_mode_figures(run: Callable, annotations: str | Path, seed: int, work: str | Path) -> dict:
    """The modes of the module docstring for ``run`` on the set ``annotations``; the exemplar box of each pair is
    drawn with ``seed`` (the same boxes for every model). ``work``: where subset annotation files go."""
    from sam3edge.data.coco import ConceptDataset
    from sam3edge.data.images import load_image
    from sam3edge.eval import evaluate
    from sam3edge.eval.predict import coco_results

    annotations, work = Path(annotations), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    data = ConceptDataset.load(annotations)
    one_category = single_category_phrases()
    rng = np.random.default_rng(seed)
    preds = {m: [] for m in ("text", "text+1", "visual", "text_on_visual_pairs")}
    visual_ids = set()
    neg = {"false_positives": 0, "removed": 0, "true_positives": 0, "tp_lost": 0, "near_misses": 0,
           "clear_removed": 0}
    for file_name in data.files:
        image = load_image(data.image_path(file_name))
        for pair in data.by_file[file_name]:
            gt = pair.masks()
            box = tight_box(gt[int(rng.integers(len(gt)))]) if len(gt) else None
            text = run(image, pair.phrase)
            preds["text"] += coco_results(pair.id, *text)
            preds["text+1"] += coco_results(pair.id, *(run(image, pair.phrase, [box], [1]) if box else text))
            if box and pair.phrase in one_category:
                visual_ids.add(pair.id)
                preds["visual"] += coco_results(pair.id, *run(image, VISUAL, [box], [1]))
                preds["text_on_visual_pairs"] += coco_results(pair.id, *text)
            _negative_exemplar(run, image, pair.phrase, text, gt, neg)
    figures = {}
    base = json.loads(annotations.read_text())
    for mode, p in preds.items():
        subset = mode in ("visual", "text_on_visual_pairs")
        gt_data = subset_pairs(base, visual_ids) if subset else base
        path = work / f"gt_{seed}_{mode}.json"
        path.write_text(json.dumps(gt_data))
        agg = evaluate(path, p).to_dict()["aggregate"]
        figures[mode] = agg["pmf1"] if subset else agg["cgf1"]
    figures["visual_pairs"] = len(visual_ids)
    figures["negative_exemplar"] = neg
    return figures


def _negative_exemplar(run, image, phrase, text, gt, counts: dict) -> None:
    masks, scores, boxes = text
    kept = np.flatnonzero(scores >= 0.5)
    if not len(kept):
        return
    iou = _iou(masks[kept], gt).max(1) if len(gt) else np.zeros(len(kept))
    fp, tp = kept[iou < 0.5], kept[iou >= 0.5]
    if not len(fp):
        return
    worst = fp[np.argmax(scores[fp])]
    after_masks, after_scores, _ = run(image, phrase, [list(boxes[worst])], [0])
    still = after_masks[after_scores >= 0.5]
    removed = int(not len(still) or _iou(masks[[worst]], still).max() < 0.5)
    counts["false_positives"] += 1
    counts["removed"] += removed
    # a near miss overlaps a true instance of the prompt (mask IoU 0.1-0.5): a localisation error of a target, which
    # a negative box on it contradicts; a clear one overlaps none (another object, or background)
    near = bool(iou[kept == worst][0] >= 0.1)  # iou: each kept prediction's best with the prompt's instances
    counts["near_misses"] += int(near)
    counts["clear_removed"] += 0 if near else removed
    if len(tp):
        counts["true_positives"] += len(tp)
        counts["tp_lost"] += int((_iou(masks[tp], still).max(1) < 0.5).sum()) if len(still) else len(tp)


def match_instances(masks, scores, gt):
    """(best mask IoU of each true instance of ``gt`` [n, H, W] under a one-to-one (Hungarian) match with the kept
    predictions (``scores`` >= 0.5), counts of the unmatched kept ones by kind: *duplicate* (IoU >= 0.5 with a true
    instance another prediction already took), *near* miss (0.1-0.5), *clear* (< 0.1))."""
    from scipy.optimize import linear_sum_assignment

    kept = masks[scores >= 0.5]
    best, kinds = np.zeros(len(gt)), {"duplicate": 0, "near": 0, "clear": 0}
    if not len(kept):
        return best, kinds
    iou = _iou(gt, kept) if len(gt) else np.zeros((0, len(kept)))
    r, c = linear_sum_assignment(-iou) if len(gt) else (np.zeros(0, int), np.zeros(0, int))
    best[r] = iou[r, c]
    unmatched = np.setdiff1d(np.arange(len(kept)), c[iou[r, c] >= 0.5])
    top = iou[:, unmatched].max(0) if len(gt) else np.zeros(len(unmatched))
    kinds["duplicate"] += int((top >= 0.5).sum())
    kinds["near"] += int(((top >= 0.1) & (top < 0.5)).sum())
    kinds["clear"] += int((top < 0.1).sum())
    return best, kinds


def refine_figures(run, annotations: Path, phrase: str = "apple") -> dict:
    """A negative box narrowing a broad concept: per ``phrase`` pair whose instances span two or more categories, for
    each category c there, a negative box on c's largest instance. Counts of true instances found (one-to-one, mask
    IoU >= 0.5, score >= 0.5) by the phrase alone and with that box: the boxed instance, the *other* instances of c
    (the matching ones a learned negative removes too), and the instances of the other categories (which must stay).
    """
    from sam3edge.data.coco import ConceptDataset, decode_mask
    from sam3edge.data.images import load_image

    data, dataset = json.loads(Path(annotations).read_text()), ConceptDataset.load(annotations)
    by_pair = {}
    for a in data["annotations"]:
        by_pair.setdefault(a["image_id"], []).append(a)
    f = {k: [0, 0, 0] for k in ("boxed", "same_kind", "other_kinds")}  # [instances, found by text, with the box]
    f["cases"] = 0
    for entry in data["images"]:
        anns = by_pair.get(entry["id"], [])
        if entry["text_input"] != phrase or len({a["category_id"] for a in anns}) < 2:
            continue
        image = load_image(dataset.image_path(entry["file_name"]))
        gt = np.stack([decode_mask(a["segmentation"]) for a in anns]).astype(bool)
        cats = np.asarray([a["category_id"] for a in anns])
        text_found = match_instances(*run(image, phrase)[:2], gt)[0] >= 0.5
        for c in sorted(set(cats.tolist())):
            idx = np.flatnonzero(cats == c)
            k = int(idx[np.argmax(gt[idx].sum((1, 2)))])
            found = match_instances(*run(image, phrase, [tight_box(gt[k])], [0])[:2], gt)[0] >= 0.5
            f["cases"] += 1
            for name, sel in (("boxed", [k]), ("same_kind", [i for i in idx if i != k]),
                              ("other_kinds", np.flatnonzero(cats != c).tolist())):
                f[name][0] += len(sel)
                f[name][1] += int(text_found[sel].sum())
                f[name][2] += int(found[sel].sum())
    return f


def refine_cells(figures: dict) -> str:
    """Markdown cells of :func:`refine_figures`: cases, then per instance group "found by the phrase -> with the
    box of all"."""
    return f"{figures['cases']} | " + " | ".join(f"{figures[k][1]} -> {figures[k][2]} of {figures[k][0]}"
                                                  for k in ("boxed", "same_kind", "other_kinds"))


def subset_pairs(data: dict, ids: set) -> dict:
    """An SA-Co annotation dict restricted to the pairs (``images`` entries) ``ids``."""
    out = dict(data)
    out["images"] = [im for im in data["images"] if im["id"] in ids]
    out["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    return out
