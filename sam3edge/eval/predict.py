"""Run any concept segmenter over an SA-Co style dataset and collect COCO-style predictions.

The segmenter is a callable ``model(images, phrases)`` returning an object with
``instances(b, p, score_threshold)`` -> {scores [K], boxes [K, 4] xyxy pixels, masks [K, H, W]} -
the teacher adapter and the students share this contract, so both are evaluated by the same code.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from sam3edge.data.coco import ConceptDataset, encode_mask
from sam3edge.data.images import load_image


def predict_dataset(model, dataset: ConceptDataset, min_score: float = 0.05, progress: bool = True) -> list[dict]:
    """COCO results (``image_id`` = pair id, RLE ``segmentation``, xywh ``bbox``, ``score``) for every pair.

    The image is encoded once and all of its pairs' phrases are asked together. Predictions below
    ``min_score`` are dropped (cgF1 keeps scores >= 0.5 only; the rest would just fill the file).
    """
    results = []
    for file_name in tqdm(dataset.files, desc="predict", disable=not progress, unit="img"):
        pairs = dataset.by_file[file_name]
        image = load_image(dataset.image_path(file_name))
        phrases = list(dict.fromkeys(p.phrase for p in pairs))
        out = model([image], phrases)
        for pair in pairs:
            inst = out.instances(0, phrases.index(pair.phrase), score_threshold=min_score)
            results += coco_results(pair.id, *(_numpy(inst[k]) for k in ("masks", "scores", "boxes")))
    return results


def coco_results(pair_id, masks, scores, boxes) -> list[dict]:
    """COCO result dicts of one pair's instances: bool masks [n, H, W], scores [n], xyxy pixel boxes [n, 4]."""
    results = []
    for m, s, b in zip(masks, scores, boxes):
        x0, y0, x1, y1 = (float(v) for v in b)
        results.append({"image_id": pair_id, "category_id": 1, "segmentation": encode_mask(m),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s)})
    return results


def _numpy(values) -> np.ndarray:
    """A torch tensor (any dtype, any device) or array-like as a numpy array."""
    if hasattr(values, "cpu"):
        values = values.cpu()
        values = values.float() if values.is_floating_point() else values
        return values.numpy()
    return np.asarray(values)
