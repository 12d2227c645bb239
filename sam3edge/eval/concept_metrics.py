"""One-call evaluation of SA-Co style concept segmentation: SAM3's cgF1 plus diagnostic extras.

Everything is computed from the same per-pair Hungarian matching SAM3's cgF1 uses, so the extras
(matched-mask IoU, box grounding error, per-phrase rows, attribute confusion) are consistent with it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam3edge.data.rle import box_l1, image_diagonal, mask_iou_matrix
from sam3edge.data.saco import Pair, SacoGT, load_gt, load_predictions
from sam3edge.eval.cgf1 import SAM3_IOU_THRESHOLDS, CGF1Result, ScoredPair, cgf1_counts, score_pairs
from sam3edge.eval.report import AttributeConfusion, ConceptReport, PhraseMetrics

__all__ = ["evaluate", "attribute_confusion"]

# IoU at which a prediction "is" an instance for precision/recall, matched-IoU, grounding and confusion.
MATCH_IOU = 0.5


def _at(result: CGF1Result, metric: str, iou: float) -> float | None:
    if not np.isclose(result.iou_thresholds, iou, rtol=0.0, atol=1e-9).any():
        return None
    return result.summary(metric, iou)


def _metrics(scored: Sequence[ScoredPair], thresholds: np.ndarray, exact: bool) -> tuple[dict, CGF1Result]:
    """Aggregate metrics of a set of scored pairs, as ConceptMetrics field values."""
    result = cgf1_counts([s.outcome for s in scored], thresholds, exact)
    ious, l1_px, l1_norm = [], [], []
    for s in scored:
        diag = image_diagonal(s.pair.height, s.pair.width)
        for d, g, iou in s.outcome.matches:
            if iou >= MATCH_IOU:  # only real detections: a Hungarian assignment below 0.5 is a miss
                ious.append(iou)
                err = float(box_l1(s.kept[d].bbox, s.gt[g].bbox))
                l1_px.append(err)
                l1_norm.append(err / diag)
    n = len(scored)
    positives = sum(1 for s in scored if s.outcome.num_gt > 0)
    values = {
        "pairs": n,
        "positives": positives,
        "negatives": n - positives,
        "gt_instances": sum(s.outcome.num_gt for s in scored),
        "predictions_kept": sum(s.outcome.num_dt for s in scored),
        "matched_instances": len(ious),
        "cgf1": result.cgf1,
        "cgf1_50": _at(result, "cgf1_per_threshold", 0.5),
        "cgf1_75": _at(result, "cgf1_per_threshold", 0.75),
        "pmf1": result.pmf1,
        "il_mcc": result.il_mcc,
        "precision": _at(result, "precision", MATCH_IOU),
        "recall": _at(result, "recall", MATCH_IOU),
        "mean_matched_iou": float(np.mean(ious)) if ious else None,
        "grounding_error_px": float(np.mean(l1_px)) if l1_px else None,
        "grounding_error_norm": float(np.mean(l1_norm)) if l1_norm else None,
        "presence_accuracy": (result.il_tp + result.il_tn) / n if n else 0.0,
        "il_tp": result.il_tp,
        "il_fp": result.il_fp,
        "il_tn": result.il_tn,
        "il_fn": result.il_fn,
    }
    return values, result


def _own_categories(gt: SacoGT, pair: Pair) -> set:
    """Names of the categories a pair's phrase covers, which hitting is not confusion.

    That is ``queried_category`` plus the categories of the pair's own instances (a phrase such as
    "apple" can cover ripe, unripe and bruised apples), or the phrase itself when neither is known.
    """
    names = {gt.category_name(i.category_id) for i in pair.instances if i.category_id is not None}
    if pair.queried_category is not None:
        names.add(gt.category_name(pair.queried_category))
    return names or {pair.phrase}


def attribute_confusion(gt: SacoGT, scored: dict) -> AttributeConfusion:
    """Count kept predictions that segment (IoU >= 0.5) GT instances of other categories in the same file.

    The other categories' instances come from every pair that shares the file name (exhaustive or not:
    an annotated unripe apple is an unripe apple either way); crowd regions are skipped, as are the
    instances of the categories the phrase itself covers and of pairs with the same phrase.
    """
    by_file = defaultdict(list)
    for pair in gt.pairs.values():
        by_file[pair.file_name].append(pair)
    counts, eligible = defaultdict(Counter), defaultdict(Counter)
    kept: Counter = Counter()
    categories: set = set()
    for s in scored.values():
        phrase, own = s.pair.phrase, _own_categories(gt, s.pair)
        kept[phrase] += len(s.kept)
        others = defaultdict(list)
        for q in by_file[s.pair.file_name]:
            if q.id == s.pair.id or q.phrase == phrase:
                continue
            for inst in q.gt:
                name = gt.category_name(inst.category_id) if inst.category_id is not None else q.phrase
                if name not in own:
                    others[name].append(inst.rle)
        categories.update(others)
        if not s.kept:
            continue
        dt = [p.rle for p in s.kept]
        for name, rles in others.items():
            eligible[phrase][name] += len(dt)
            hit = (mask_iou_matrix(dt, rles) >= MATCH_IOU).any(axis=1)
            counts[phrase][name] += int(hit.sum())
    phrases = tuple(sorted({s.pair.phrase for s in scored.values()}))
    return AttributeConfusion(
        phrases=phrases,
        categories=tuple(sorted(categories)),
        counts={p: dict(counts[p]) for p in phrases},
        eligible={p: dict(eligible[p]) for p in phrases},
        kept={p: kept[p] for p in phrases},
    )


def evaluate(
    gt: dict | str | Path,
    predictions: list[dict] | str | Path,
    score_threshold: float = 0.5,
    *,
    iou_thresholds: Sequence[float] = SAM3_IOU_THRESHOLDS,
    exact: bool = False,
) -> ConceptReport:
    """Evaluate concept-segmentation predictions against SA-Co ground truth.

    Args:
        gt: SA-Co ground-truth dict or JSON path (one ``images`` entry per (image, phrase) pair).
        predictions: COCO results list or JSON path (``image_id`` = pair id, RLE ``segmentation``,
            ``bbox``, ``score``).
        score_threshold: predictions below it are discarded before everything (SAM3: 0.5).
        iou_thresholds: IoU thresholds for cgF1; the default is exactly SAM3's.
        exact: drop SAM3's smoothing constants (then perfect predictions score exactly 1.0).

    Returns:
        A :class:`ConceptReport`: aggregates whose cgF1/cgF1@50/cgF1@75/pmF1/IL_MCC equal SAM3's
        ``CGF1Evaluator`` output, per-phrase rows, attribute confusion and per-threshold detail.

    Raises:
        ValueError: malformed ground truth or predictions (the message names the entry and field), or
            no instance-exhaustive pair to evaluate.
    """
    gt_set = load_gt(gt)
    preds = load_predictions(predictions, gt_set)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    scored = score_pairs(gt_set, preds, score_threshold, thresholds)
    if not scored:
        raise ValueError(
            "ground truth: no pair has is_instance_exhaustive = true, so nothing can be evaluated "
            "(non-exhaustive pairs are excluded because unannotated instances would count as false positives)"
        )
    values, detail = _metrics(list(scored.values()), thresholds, exact)
    by_phrase = defaultdict(list)
    for s in scored.values():
        by_phrase[s.pair.phrase].append(s)
    rows = tuple(
        PhraseMetrics(phrase=phrase, **_metrics(by_phrase[phrase], thresholds, exact)[0])
        for phrase in sorted(by_phrase)
    )
    return ConceptReport(
        **values,
        per_phrase=rows,
        confusion=attribute_confusion(gt_set, scored),
        detail=detail,
        score_threshold=float(score_threshold),
        exact=exact,
        excluded_pairs=len(gt_set.pairs) - len(scored),
    )
