"""SA-Co cgF1 ("classification-gated F1"), computed exactly as SAM3's ``sam3/eval/cgf1_eval.py``.

Definition (per IoU threshold t in 0.50:0.05:0.95):

* Only pairs with ``is_instance_exhaustive`` are evaluated; crowd GT instances are dropped.
* Predictions with ``score >= score_threshold`` (0.5) are kept; the rest do not exist.
* Per pair, kept predictions and GT masks are matched one-to-one by the Hungarian algorithm
  maximising total mask IoU (not greedily by score); ``TP = #matches with IoU >= t``,
  ``FP = #kept - TP``, ``FN = #GT - TP``.
* Positive micro F1 (pmF1): TP and FN summed over all pairs, FP summed only over pairs that have GT
  *and* predictions, so false positives on negatives are left to the image-level term.
* Image-level MCC over all evaluated pairs: "present" in GT iff the pair has a non-crowd instance,
  "predicted present" iff at least one prediction survives the score filter.
* ``cgF1(t) = pmF1(t) * IL_MCC``; reported as the mean over thresholds and at t = 0.5 and 0.75.

SAM3 adds smoothing constants to every ratio (1e-4 in precision/recall/F1, 1e-6 in the image-level
metrics), so its perfect score is 0.9998..., not 1.  ``exact=False`` (default) reproduces those numbers
bit for bit; ``exact=True`` drops the constants and defines 0/0 as 0 (the limit SAM3's constants give).

The IoU thresholds are pycocotools' ``np.linspace(0.5, 0.95, 10)``, not ``np.arange(0.5, 0.96, 0.05)``:
the two differ in the last bit from 0.6 on, which flips ``IoU >= t`` for IoUs such as exactly 0.6.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam3edge.data.saco import SacoGT, load_gt, load_predictions
from sam3edge.eval.matching import (
    EPS_IMAGE,
    EPS_INSTANCE,
    SAM3_IOU_THRESHOLDS,
    PairOutcome,
    ScoredPair,
    f1_score,
    match_pair,
    ratio,
    score_pairs,
)

__all__ = [
    "SAM3_IOU_THRESHOLDS",
    "PairOutcome",
    "ScoredPair",
    "CGF1Result",
    "match_pair",
    "cgf1_counts",
    "score_pairs",
    "evaluate_cgf1",
]


def _summary(values: np.ndarray, thresholds: np.ndarray, at: float | None) -> float:
    """SAM3's ``summarize``: mean over thresholds (or the entry at ``at``) of the values > -1, else -1."""
    s = np.asarray(values, dtype=np.float64)
    if at is not None:
        s = s[np.isclose(thresholds, at, rtol=0.0, atol=1e-9)]
    s = s[s > -1]
    return -1.0 if len(s) == 0 else float(np.mean(s))


@dataclass(frozen=True)
class CGF1Result:
    """Summed counts and every metric SAM3's cgF1 evaluator reports, per IoU threshold and summarised."""

    iou_thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray  # all false positives, negatives included (used by ``precision``/``f1``)
    pm_fp: np.ndarray  # false positives on pairs with GT and predictions only (used by pmF1)
    fn: np.ndarray
    il_tp: int
    il_fp: int
    il_tn: int
    il_fn: int
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    pm_precision: np.ndarray
    pm_f1: np.ndarray
    pm_macro_f1: np.ndarray  # NaN where no pair has both GT and predictions
    cgf1_per_threshold: np.ndarray
    il_precision: float
    il_recall: float
    il_f1: float
    il_fpr: float
    il_mcc: float
    exact: bool

    def summary(self, metric: str, at: float | None = None) -> float:
        """Mean of a per-threshold metric over thresholds, or its value at IoU ``at``; -1 if undefined."""
        return _summary(getattr(self, metric), self.iou_thresholds, at)

    @property
    def cgf1(self) -> float:
        """cgF1 averaged over the IoU thresholds (SAM3's headline number)."""
        return self.summary("cgf1_per_threshold")

    @property
    def cgf1_50(self) -> float:
        """cgF1 at IoU 0.5 (-1 if 0.5 is not among the thresholds)."""
        return self.summary("cgf1_per_threshold", 0.5)

    @property
    def cgf1_75(self) -> float:
        """cgF1 at IoU 0.75 (-1 if 0.75 is not among the thresholds)."""
        return self.summary("cgf1_per_threshold", 0.75)

    @property
    def pmf1(self) -> float:
        """Positive micro F1 averaged over the IoU thresholds."""
        return self.summary("pm_f1")

    def to_sam3_dict(self, iou_type: str = "segm") -> dict:
        """The dict ``CGF1Evaluator.evaluate`` returns, same keys and values (-1 marks 'undefined')."""
        fields = {
            "cgF1": "cgf1_per_threshold",
            "precision": "precision",
            "recall": "recall",
            "F1": "f1",
            "positive_macro_F1": "pm_macro_f1",
            "positive_micro_F1": "pm_f1",
            "positive_micro_precision": "pm_precision",
        }
        image_level = {
            "IL_precision": self.il_precision,
            "IL_recall": self.il_recall,
            "IL_F1": self.il_f1,
            "IL_FPR": self.il_fpr,
            "IL_MCC": self.il_mcc,
        }
        out = {f"cgF1_eval_{iou_type}_{k}": self.summary(v) for k, v in fields.items()}
        out.update({f"cgF1_eval_{iou_type}_{k}": float(v) for k, v in image_level.items()})
        for at in (0.5, 0.75):
            out.update({f"cgF1_eval_{iou_type}_{k}@{at}": self.summary(v, at) for k, v in fields.items()})
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable dump: per-threshold arrays as lists (NaN -> None) plus the summaries."""

        def arr(a):
            return [None if np.isnan(x) else (int(x) if a.dtype.kind == "i" else float(x)) for x in a]

        per_t = (
            "tp",
            "fp",
            "pm_fp",
            "fn",
            "precision",
            "recall",
            "f1",
            "pm_precision",
            "pm_f1",
            "pm_macro_f1",
            "cgf1_per_threshold",
        )
        out = {"iou_thresholds": arr(self.iou_thresholds), **{k: arr(getattr(self, k)) for k in per_t}}
        out.update({k: int(getattr(self, k)) for k in ("il_tp", "il_fp", "il_tn", "il_fn")})
        out.update(
            {k: float(getattr(self, k)) for k in ("il_precision", "il_recall", "il_f1", "il_fpr", "il_mcc")}
        )
        out.update(
            cgf1=self.cgf1, cgf1_50=self.cgf1_50, cgf1_75=self.cgf1_75, pmf1=self.pmf1, exact=self.exact
        )
        return out


def cgf1_counts(
    outcomes: Iterable[PairOutcome],
    iou_thresholds: Sequence[float] = SAM3_IOU_THRESHOLDS,
    exact: bool = False,
) -> CGF1Result:
    """Aggregate per-pair outcomes into TP/FP/FN sums, image-level confusion counts and all metrics.

    This is SAM3's ``CGF1Eval.accumulate``; the arithmetic is written in the same order so that results
    are bit-identical (floating-point sums are not associative).
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    n_t = len(thresholds)
    tp, fp, pm_fp, fn = (np.zeros(n_t, dtype=np.int64) for _ in range(4))
    local_f1_sum = np.zeros(n_t, dtype=np.float64)
    il = {"TP": 0, "FP": 0, "TN": 0, "FN": 0}
    n_local = 0
    for o in outcomes:
        il[o.presence] += 1
        if o.presence == "TN":  # no instance-level counts exist for an empty/empty pair
            continue
        tp += o.tp
        fp += o.fp
        fn += o.fn
        if o.presence == "TP":
            local_f1_sum += o.local_f1(exact)
            pm_fp += o.fp
            n_local += 1
    precision = ratio(tp, tp + fp, EPS_INSTANCE, exact)
    pm_precision = ratio(tp, tp + pm_fp, EPS_INSTANCE, exact)
    recall = ratio(tp, tp + fn, EPS_INSTANCE, exact)
    pm_f1 = f1_score(pm_precision, recall, exact)
    i_tp, i_fp, i_tn, i_fn = il["TP"], il["FP"], il["TN"], il["FN"]
    il_recall = ratio(i_tp, i_tp + i_fn, EPS_IMAGE, exact)
    il_precision = ratio(i_tp, i_tp + i_fp, EPS_IMAGE, exact)
    mcc_den = (float(i_tp + i_fp) * float(i_tp + i_fn) * float(i_tn + i_fp) * float(i_tn + i_fn)) ** 0.5
    il_mcc = ratio(float(i_tp * i_tn - i_fp * i_fn), mcc_den, EPS_IMAGE, exact)
    return CGF1Result(
        iou_thresholds=thresholds,
        tp=tp,
        fp=fp,
        pm_fp=pm_fp,
        fn=fn,
        il_tp=i_tp,
        il_fp=i_fp,
        il_tn=i_tn,
        il_fn=i_fn,
        precision=precision,
        recall=recall,
        f1=f1_score(precision, recall, exact),
        pm_precision=pm_precision,
        pm_f1=pm_f1,
        pm_macro_f1=local_f1_sum / n_local if n_local else np.full(n_t, np.nan),
        cgf1_per_threshold=pm_f1 * il_mcc,
        il_precision=float(il_precision),
        il_recall=float(il_recall),
        il_f1=float(ratio(2 * il_precision * il_recall, il_precision + il_recall, EPS_IMAGE, exact)),
        il_fpr=float(ratio(i_fp, i_fp + i_tn, EPS_IMAGE, exact)),
        il_mcc=float(il_mcc),
        exact=exact,
    )


def _oracle_pick(candidates: list[PairOutcome], exact: bool) -> PairOutcome:
    """SAM3's ``_select_best_scoring``: keep the annotator whose GT gives the best mean local F1.

    A true-negative outcome (no GT, no prediction) has no F1 and is treated as perfect.
    """
    best = candidates[0]
    for cur in candidates[1:]:
        best_f1, cur_f1 = best.local_f1(exact), cur.local_f1(exact)
        if best_f1 is not None and cur_f1 is not None:
            if cur_f1.mean() > best_f1.mean():
                best = cur
        elif cur_f1 is None:
            best = cur
    return best


def evaluate_cgf1(
    gt_pairs: dict | str | Path | SacoGT | list,
    predictions: list | str | Path,
    score_threshold: float = 0.5,
    iou_thresholds: Sequence[float] = SAM3_IOU_THRESHOLDS,
    exact: bool = False,
) -> CGF1Result:
    """Compute SA-Co cgF1 and its components for a prediction list.

    Args:
        gt_pairs: SA-Co ground truth (dict, JSON path or loaded :class:`SacoGT`).  A list of several
            ground truths of the same pairs (e.g. SA-Co/Gold's three annotators) gives SAM3's "oracle"
            evaluation: each pair is scored against the annotator that suits the predictions best, and
            a pair is only evaluated if it is instance-exhaustive for every annotator.
        predictions: COCO results list (or JSON path); ``image_id`` is the pair id.
        score_threshold: predictions scoring below it are discarded (SAM3: 0.5).
        iou_thresholds: IoU thresholds; default is exactly SAM3's.
        exact: drop SAM3's smoothing constants (see module docstring).

    Returns:
        A :class:`CGF1Result`; ``.cgf1``, ``.cgf1_50``, ``.cgf1_75``, ``.pmf1``, ``.il_mcc`` and the
        ``il_*`` confusion counts are the headline numbers, ``.to_sam3_dict()`` mirrors SAM3's output.
    """
    sources = gt_pairs if isinstance(gt_pairs, list) else [gt_pairs]
    if not sources:
        raise ValueError("gt_pairs: empty list; give one ground truth (or several for oracle evaluation)")
    gts = [g if isinstance(g, SacoGT) else load_gt(g) for g in sources]
    for k, other in enumerate(gts[1:], start=1):
        if list(other.pairs) != list(gts[0].pairs) or any(
            (p.height, p.width) != (gts[0].pairs[i].height, gts[0].pairs[i].width)
            for i, p in other.pairs.items()
        ):
            raise ValueError(
                f"gt_pairs[{k}]: oracle ground truths must list the same pairs (ids, order, sizes)"
            )
    preds = load_predictions(predictions, gts[0])
    skip = {pid for g in gts[1:] for pid, p in g.pairs.items() if not p.exhaustive}
    per_gt = [score_pairs(g, preds, score_threshold, iou_thresholds) for g in gts]
    outcomes = [_oracle_pick([s[pid].outcome for s in per_gt], exact) for pid in per_gt[0] if pid not in skip]
    if not outcomes:  # SAM3's evaluator crashes here (np.concatenate of nothing); say why instead
        raise ValueError(
            "gt_pairs: no pair is instance-exhaustive (in every ground truth); nothing to evaluate"
        )
    return cgf1_counts(outcomes, iou_thresholds, exact)
