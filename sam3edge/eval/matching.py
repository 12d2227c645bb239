"""Per-pair matching for SA-Co cgF1: score filter, mask IoU, Hungarian assignment, TP/FP/FN per threshold.

This is the part of SAM3's ``CGF1Eval.evaluateImg`` that looks at one (image, phrase) pair; the
aggregation over pairs lives in :mod:`sam3edge.eval.cgf1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from sam3edge.data.rle import mask_iou_matrix
from sam3edge.data.saco import Pair, Prediction, SacoGT

__all__ = [
    "SAM3_IOU_THRESHOLDS",
    "PairOutcome",
    "ScoredPair",
    "match_pair",
    "score_pairs",
    "ratio",
    "f1_score",
]

# Exactly pycocotools' Params.iouThrs (what SAM3 uses); np.arange(0.5, 0.96, 0.05) differs in the last
# bit from 0.6 on, which flips `IoU >= t` for an IoU of exactly 0.6 (see sam3edge.eval.cgf1).
SAM3_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)

# Smoothing constants of SAM3's evaluator (instance-level ratios, image-level ratios).
EPS_INSTANCE = 1e-4
EPS_IMAGE = 1e-6


def ratio(num, den, eps: float, exact: bool):
    """``num / (den + eps)`` like SAM3, or ``num / den`` with 0/0 := 0 when ``exact``."""
    if not exact:
        return num / (den + eps)
    num_a, den_a = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.divide(num_a, den_a, out=np.zeros(np.broadcast(num_a, den_a).shape), where=den_a != 0)
    return out if out.ndim else float(out)


def f1_score(precision, recall, exact: bool):
    return ratio(2 * precision * recall, precision + recall, EPS_INSTANCE, exact)


@dataclass(frozen=True)
class PairOutcome:
    """Matching result of one (image, phrase) pair: per-threshold TP/FP/FN plus the Hungarian matches."""

    num_gt: int
    num_dt: int
    tp: np.ndarray  # int64, one entry per IoU threshold
    fp: np.ndarray
    fn: np.ndarray
    matches: tuple  # ((dt_index, gt_index, iou), ...); includes assignments with IoU below every threshold

    @property
    def presence(self) -> str:
        """Image-level outcome: 'TP', 'FP', 'TN' or 'FN' (present = >= 1 GT / >= 1 kept prediction)."""
        return {(True, True): "TP", (False, True): "FP", (False, False): "TN", (True, False): "FN"}[
            (self.num_gt > 0, self.num_dt > 0)
        ]

    def local_f1(self, exact: bool = False) -> np.ndarray | None:
        """Per-threshold F1 of this pair alone; None for a true negative, where SAM3 leaves it undefined."""
        if self.num_gt == 0 and self.num_dt == 0:
            return None
        precision = ratio(self.tp, self.tp + self.fp, EPS_INSTANCE, exact)
        recall = ratio(self.tp, self.tp + self.fn, EPS_INSTANCE, exact)
        return f1_score(precision, recall, exact)


def match_pair(ious: np.ndarray, iou_thresholds: Sequence[float] = SAM3_IOU_THRESHOLDS) -> PairOutcome:
    """Score one pair from the IoU matrix between its kept predictions (rows) and non-crowd GT (columns).

    The assignment maximises the *sum* of IoUs (``linear_sum_assignment(-ious)``, as SAM3 does), and a
    matched couple counts as TP at threshold t iff its IoU >= t.  Greedy score-ordered matching (COCO
    AP) can pair a prediction with the wrong GT and lose a TP that this assignment keeps.
    """
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2:
        raise ValueError(f"ious must be a 2-D (predictions x ground truth) matrix, got shape {ious.shape}")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    num_dt, num_gt = ious.shape
    rows, cols = linear_sum_assignment(-ious)
    scores = ious[rows, cols]
    tp = np.array([(scores >= t).sum() for t in thresholds], dtype=np.int64)
    matches = tuple((int(r), int(c), float(s)) for r, c, s in zip(rows, cols, scores, strict=True))
    return PairOutcome(num_gt=num_gt, num_dt=num_dt, tp=tp, fp=num_dt - tp, fn=num_gt - tp, matches=matches)


@dataclass(frozen=True)
class ScoredPair:
    """An evaluated pair with what the extra metrics need: kept predictions, GT, IoUs and the matching."""

    pair: Pair
    kept: tuple[Prediction, ...]
    gt: tuple  # non-crowd instances, in matching order
    ious: np.ndarray  # (len(kept), len(gt))
    outcome: PairOutcome


def score_pairs(
    gt: SacoGT,
    predictions: dict,
    score_threshold: float = 0.5,
    iou_thresholds: Sequence[float] = SAM3_IOU_THRESHOLDS,
) -> dict:
    """Filter, IoU and match every instance-exhaustive pair; returns ``{pair_id: ScoredPair}`` in GT order.

    ``predictions`` is the output of :func:`load_predictions`.  Non-exhaustive pairs are skipped entirely
    (their missing instances would count as false positives), exactly as SAM3 does.
    """
    scored = {}
    for pid, pair in gt.pairs.items():
        if not pair.exhaustive:
            continue
        kept = tuple(p for p in predictions.get(pid, ()) if p.score >= score_threshold)
        gts = pair.gt
        ious = mask_iou_matrix([p.rle for p in kept], [g.rle for g in gts])
        scored[pid] = ScoredPair(pair, kept, gts, ious, match_pair(ious, iou_thresholds))
    return scored
