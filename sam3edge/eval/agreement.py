"""How closely a student reproduces its teacher, in the same metric as ground truth (cgF1).

The teacher's kept instances (score >= 0.5) on held-out images become an SA-Co ground-truth set
(a phrase it finds nothing for is a hard negative), and the student is scored against it with
:func:`~sam3edge.eval.concept_metrics.evaluate`: "agreement" is then cgF1, recall, mask IoU and
presence MCC of student vs teacher - 1.0 means the student segments exactly what the teacher does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sam3edge.data.coco import ConceptDataset, encode_mask
from sam3edge.data.images import load_image
from sam3edge.eval.concept_metrics import evaluate
from sam3edge.eval.predict import _numpy, predict_dataset

SUMMARY_KEYS = ("cgf1", "cgf1_50", "cgf1_75", "pmf1", "il_mcc", "precision", "recall", "mean_matched_iou",
                "presence_accuracy", "pairs", "positives", "gt_instances", "predictions_kept")


def pseudo_ground_truth(teacher, files: list[str | Path], phrases: list[str], score_threshold: float = 0.5,
                        progress: bool = True) -> dict:
    """SA-Co ground truth (dict) of ``teacher``'s kept instances on ``files`` (absolute paths) for ``phrases``."""
    images, annotations = [], []
    for f in tqdm(files, desc="teacher pseudo-labels", disable=not progress, unit="img"):
        image = load_image(f)
        h, w = image.shape[:2]
        out = teacher([image], list(phrases))
        for p, phrase in enumerate(phrases):
            pair_id = len(images) + 1
            images.append({"id": pair_id, "file_name": str(Path(f).resolve()), "width": w, "height": h,
                           "text_input": phrase, "is_instance_exhaustive": True, "queried_category": None})
            inst = out.instances(0, p, score_threshold=score_threshold)
            for m in _numpy(inst["masks"]):
                if not m.any():
                    continue
                ys, xs = np.nonzero(m)
                annotations.append({"id": len(annotations) + 1, "image_id": pair_id, "category_id": 1,
                                    "segmentation": encode_mask(m), "area": int(m.sum()), "iscrowd": 0,
                                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                             int(ys.max() - ys.min() + 1)]})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "teacher instance"}]}


def summary(report) -> dict:
    agg = report.to_dict()["aggregate"]
    return {k: agg.get(k) for k in SUMMARY_KEYS}


def agreement_report(student, teacher, files: list[str | Path], phrases: list[str], progress: bool = True) -> dict:
    """Student scored against the teacher's pseudo ground truth on ``files`` (see the module docstring)."""
    gt = pseudo_ground_truth(teacher, files, phrases, progress=progress)
    ds = ConceptDataset(gt, root="/", source="teacher pseudo-labels")
    preds = predict_dataset(student, ds, progress=progress)
    return summary(evaluate(gt, preds))


def gt_report(model, dataset: ConceptDataset, files: list[str | Path], phrases: list[str] | None = None,
              progress: bool = False) -> dict:
    """``model`` scored against ``dataset``'s ground truth, restricted to the images ``files`` (and the pairs
    that ask one of ``phrases``, when given: a distilled student knows only its concepts)."""
    keep = {str(Path(f).resolve()) for f in files}
    known = set(phrases) if phrases is not None else None
    data = json.loads(Path(dataset.source).read_text(encoding="utf-8"))
    images = [im for im in data["images"] if str(dataset.image_path(im["file_name"]).resolve()) in keep
              and (known is None or im["text_input"] in known)]
    ids = {im["id"] for im in images}
    sub = dict(data, images=images, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    preds = predict_dataset(model, ConceptDataset(sub, dataset.root, source=dataset.source), progress=progress)
    return summary(evaluate(sub, preds))
