"""Loading and validation of SA-Co ground truth and COCO-style predictions.

SA-Co stores one *(image, noun phrase)* pair per entry of ``images``; annotations point at the pair
id, and a pair without annotations is a hard negative.  Several pairs can share a ``file_name``.
Predictions are a COCO results list whose ``image_id`` is the pair id.

Everything is validated up front so that the metric code can trust its inputs, and errors name the
offending entry instead of surfacing later as a pycocotools crash (or, for corrupted RLE, silent
memory corruption).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam3edge.data.rle import decode_segmentation, rle_bbox, to_rle, validate_bbox

__all__ = ["Instance", "Pair", "Prediction", "SacoGT", "load_json", "load_gt", "load_predictions"]


@dataclass(frozen=True)
class Instance:
    """One ground-truth instance mask of a pair."""

    rle: dict
    bbox: np.ndarray  # [x, y, w, h] in pixels
    iscrowd: bool
    category_id: object
    ann_id: object


@dataclass(frozen=True)
class Pair:
    """One (image, noun phrase) query with its ground-truth instances."""

    id: object
    file_name: str
    height: int
    width: int
    phrase: str
    queried_category: object  # resolved category id, or None when unknown
    exhaustive: bool
    instances: tuple[Instance, ...]  # in the order SAM3's evaluator sees them (see load_gt)

    @property
    def gt(self) -> tuple[Instance, ...]:
        """Instances that count for matching: SAM3 (like COCOeval) ignores crowd regions entirely."""
        return tuple(inst for inst in self.instances if not inst.iscrowd)

    @property
    def is_negative(self) -> bool:
        """A hard negative: the phrase has no (non-crowd) instance in the image."""
        return not self.gt

    def masks(self) -> np.ndarray:
        """Boolean [N, H, W] masks of the non-crowd instances (decoded on demand)."""
        if not self.gt:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return np.stack([decode_segmentation(i.rle, self.height, self.width) for i in self.gt])


@dataclass(frozen=True)
class Prediction:
    """One predicted instance for a pair."""

    pair_id: object
    rle: dict
    bbox: np.ndarray  # [x, y, w, h]; the prediction's own box if given, else the mask's tight box
    score: float
    index: int  # position in the results list, used for stable ordering


@dataclass(frozen=True)
class SacoGT:
    """A validated SA-Co ground-truth set: pairs in file order plus the category names."""

    pairs: dict  # pair id -> Pair, in the order of ``images``
    categories: dict  # category id -> name

    def category_name(self, category_id: object) -> str:
        """Readable name of a category id (the id itself when the category list lacks it)."""
        return str(self.categories.get(category_id, category_id))


def load_json(src: object, what: str) -> object:
    """Return ``src`` parsed from JSON when it is a path, else unchanged."""
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            raise ValueError(f"{what}: file {str(path)!r} does not exist")
        with path.open() as f:
            return json.load(f)
    return src


def _require(entry: dict, key: str, where: str) -> object:
    if key not in entry:
        raise ValueError(f"{where}: missing required field {key!r}")
    return entry[key]


def _positive_int(value: object, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise ValueError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    return int(value)


def _resolve_category(value: object, categories: dict) -> object:
    """``queried_category`` may be a category id or a category name; map it to an id if possible."""
    if value is None:
        return None
    if value in categories:
        return value
    by_name = {name: cid for cid, name in categories.items()}
    return by_name.get(value)


def load_gt(gt: dict | str | Path) -> SacoGT:
    """Load and validate an SA-Co ground-truth JSON (dict or path).

    Instances of a pair are ordered by category id (stable), which is the order pycocotools'
    ``COCOeval`` with ``useCats=False`` hands them to SAM3's evaluator; Hungarian matching can break
    exact ties by order, so keeping the order keeps the numbers identical.

    Deviation from SAM3: a missing ``is_instance_exhaustive`` defaults to True (SAM3 raises KeyError),
    and annotations whose ``category_id`` is not in ``categories`` raise ValueError (SAM3 silently drops
    them).
    """
    data = load_json(gt, "ground truth")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(
            "ground truth: JSON has no 'images' list; expected the SA-Co/COCO layout with one entry per "
            "(image, noun phrase) pair in 'images' and instances in 'annotations'"
        )
    if not isinstance(data.get("annotations"), list):
        # without it every pair would score as a hard negative, silently (SAM3's loader raises KeyError)
        raise ValueError(
            "ground truth: JSON has no 'annotations' list, so every (image, phrase) pair would count as a hard "
            "negative; is it an image list rather than annotations? Write \"annotations\": [] if every pair "
            "really has no instance"
        )
    categories: dict = {}
    for k, cat in enumerate(data.get("categories") or []):
        where = f"ground truth categories[{k}]"
        if not isinstance(cat, dict):
            raise ValueError(f"{where}: expected an object with 'id' and 'name'")
        categories[_require(cat, "id", where)] = str(cat.get("name", cat["id"]))
    has_categories = "categories" in data and data["categories"] is not None

    raw_pairs: dict = {}
    size_of_file: dict = {}
    for k, img in enumerate(data["images"]):
        where = f"ground truth images[{k}]"
        if not isinstance(img, dict):
            raise ValueError(f"{where}: expected an object, got {type(img).__name__}")
        pid = _require(img, "id", where)
        if pid in raw_pairs:
            raise ValueError(
                f"{where}: duplicate pair id {pid!r}; every (image, phrase) pair needs its own id"
            )
        h = _positive_int(_require(img, "height", where), "height", where)
        w = _positive_int(_require(img, "width", where), "width", where)
        file_name = str(img.get("file_name", pid))
        if size_of_file.setdefault(file_name, (h, w)) != (h, w):
            raise ValueError(
                f"{where}: file {file_name!r} appears with sizes {size_of_file[file_name]} and {(h, w)}"
            )
        raw_pairs[pid] = (img, file_name, h, w)

    instances = defaultdict(list)
    for k, ann in enumerate(data.get("annotations") or []):
        if not isinstance(ann, dict):
            raise ValueError(f"ground truth annotations[{k}]: expected an object")
        where = f"ground truth annotations[{k}] (id {ann.get('id')!r})"
        pid = _require(ann, "image_id", where)
        if pid not in raw_pairs:
            raise ValueError(f"{where}: image_id {pid!r} is not the id of any entry in 'images'")
        cat = ann.get("category_id")
        if has_categories and cat not in categories:
            raise ValueError(f"{where}: category_id {cat!r} is not listed in 'categories'")
        _, _, h, w = raw_pairs[pid]
        rle = to_rle(ann.get("segmentation"), h, w, where=where)
        bbox = validate_bbox(ann["bbox"], where) if ann.get("bbox") is not None else rle_bbox(rle)
        inst = Instance(
            rle=rle, bbox=bbox, iscrowd=bool(ann.get("iscrowd", 0)), category_id=cat, ann_id=ann.get("id")
        )
        instances[pid].append(inst)

    # COCOeval (useCats=False) concatenates a pair's instances category by category, ids sorted.
    used_ids = categories or {i.category_id for v in instances.values() for i in v}
    cat_rank = {cid: r for r, cid in enumerate(_sorted_ids(used_ids))}
    pairs = {}
    for pid, (img, file_name, h, w) in raw_pairs.items():
        insts = sorted(instances[pid], key=lambda i: cat_rank.get(i.category_id, 0))
        queried = _resolve_category(img.get("queried_category"), categories)
        pairs[pid] = Pair(
            id=pid,
            file_name=file_name,
            height=h,
            width=w,
            phrase=str(img.get("text_input", categories.get(queried, ""))),
            queried_category=queried,
            exhaustive=bool(img.get("is_instance_exhaustive", True)),
            instances=tuple(insts),
        )
    return SacoGT(pairs=pairs, categories=categories)


def _sorted_ids(ids) -> list:
    try:
        return sorted(ids)
    except TypeError:  # mixed id types cannot be ordered; fall back to a deterministic textual order
        return sorted(ids, key=repr)


def load_predictions(predictions: list | str | Path, gt: SacoGT) -> dict:
    """Load and validate a COCO results list (or a dict holding it under ``annotations``) against ``gt``.

    Returns ``{pair_id: [Prediction, ...]}`` for every pair (empty lists included), each list in
    results-file order.  A prediction's ``category_id`` is ignored: the pair id already fixes the
    concept.  (SAM3's evaluator needs the field, drops predictions whose category is not in
    ``categories`` and groups a pair's predictions by category before matching; with one category per
    pair, as SAM3 writes them, the order is the same, and order only matters for exact Hungarian ties.)
    """
    data = load_json(predictions, "predictions")
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise ValueError("predictions: expected a COCO results list (a JSON array of prediction objects)")
    by_pair: dict = {pid: [] for pid in gt.pairs}
    for k, pred in enumerate(data):
        where = f"predictions[{k}]"
        if not isinstance(pred, dict):
            raise ValueError(f"{where}: expected an object, got {type(pred).__name__}")
        pid = _require(pred, "image_id", where)
        pair = gt.pairs.get(pid)
        if pair is None:
            hint = (
                " (ids are compared by type too: 3 != '3')" if str(pid) in {str(p) for p in gt.pairs} else ""
            )
            raise ValueError(
                f"{where}: image_id {pid!r} is not a pair id of the ground truth{hint}; predictions must use "
                "the 'id' of the (image, phrase) entry in 'images'"
            )
        score = _require(pred, "score", where)
        if isinstance(score, bool) or not isinstance(score, (int, float, np.floating, np.integer)):
            raise ValueError(f"{where}: 'score' must be a number, got {score!r}")
        if math.isnan(float(score)):
            raise ValueError(f"{where}: 'score' is NaN; give every prediction a real confidence")
        if "segmentation" not in pred or pred["segmentation"] is None:
            raise ValueError(f"{where}: missing 'segmentation'; predictions need an RLE mask")
        rle = to_rle(pred["segmentation"], pair.height, pair.width, where=f"{where} (pair {pid!r})")
        bbox = validate_bbox(pred["bbox"], where) if pred.get("bbox") is not None else rle_bbox(rle)
        by_pair[pid].append(Prediction(pair_id=pid, rle=rle, bbox=bbox, score=float(score), index=k))
    return by_pair
