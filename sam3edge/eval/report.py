"""Result containers for concept-segmentation evaluation: aggregates, per-phrase rows, attribute confusion.

:func:`sam3edge.eval.concept_metrics.evaluate` fills these; they only hold numbers and know how to
serialise (``to_dict``/``save_json``) and print themselves (``format_table``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from sam3edge.atomic import atomic_write_text
from sam3edge.eval.cgf1 import CGF1Result

__all__ = ["ConceptMetrics", "PhraseMetrics", "AttributeConfusion", "ConceptReport"]


@dataclass(frozen=True)
class ConceptMetrics:
    """Metrics over a set of evaluated (image, phrase) pairs.

    ``precision`` and ``recall`` are instance-level at IoU 0.5 (SAM3's ``precision@0.5`` and
    ``recall@0.5``: precision counts false positives on negative pairs too).  ``mean_matched_iou`` and the
    grounding errors use the Hungarian-matched (prediction, GT) couples with IoU >= 0.5, i.e. exactly the
    true positives at 0.5, so they measure mask/box quality *given* a correct detection; they are None
    when there is no such couple.  ``grounding_error_px`` is the mean absolute difference of the four box
    corners (x0, y0, x1, y1) in pixels, ``grounding_error_norm`` the same divided by the image diagonal.
    ``presence_accuracy`` = (IL_TP + IL_TN) / pairs.  Metrics at an IoU that is not among the thresholds
    are None.
    """

    pairs: int
    positives: int  # pairs with >= 1 non-crowd GT instance
    negatives: int
    gt_instances: int
    predictions_kept: int
    matched_instances: int  # Hungarian matches with IoU >= 0.5 (= TP at 0.5)
    cgf1: float
    cgf1_50: float | None
    cgf1_75: float | None
    pmf1: float
    il_mcc: float
    precision: float | None
    recall: float | None
    mean_matched_iou: float | None
    grounding_error_px: float | None
    grounding_error_norm: float | None
    presence_accuracy: float
    il_tp: int
    il_fp: int
    il_tn: int
    il_fn: int

    def metrics_dict(self) -> dict:
        """The fields as a plain dict (JSON-serialisable: ints, floats and None only)."""
        return {f.name: getattr(self, f.name) for f in fields(ConceptMetrics)}


@dataclass(frozen=True)
class PhraseMetrics(ConceptMetrics):
    """:class:`ConceptMetrics` restricted to the pairs of one noun phrase.

    Note that a phrase whose pairs are all positive (or all negative) has IL_MCC = 0 and hence cgF1 = 0
    whatever the predictions: MCC needs both classes.  Read ``presence_accuracy``, pmF1 and recall there.
    """

    phrase: str = ""


@dataclass(frozen=True)
class AttributeConfusion:
    """How often a phrase's kept predictions segment instances of *other* categories in the same image.

    ``counts[phrase][category]``: kept predictions of ``phrase`` with IoU >= 0.5 against at least one GT
    instance of ``category``, where those instances come from the other pairs sharing the image file
    (e.g. how often "ripe apple" segments an annotated unripe apple).  ``kept[phrase]`` is the number of
    kept predictions of the phrase (denominator of :meth:`rate`); ``eligible[phrase][category]`` counts
    only the predictions made on images where ``category`` is annotated, i.e. the ones that could have
    been confused.  A prediction overlapping instances of two categories counts for both.  Categories
    the phrase itself covers (its ``queried_category`` and the categories of its own GT instances, so
    "apple" may cover ripe and unripe apples) are never counted as confusion.
    """

    phrases: tuple[str, ...]
    categories: tuple[str, ...]
    counts: dict
    eligible: dict
    kept: dict

    def rate(self, phrase: str, category: str) -> float | None:
        """``counts / kept`` for one cell; None when the phrase kept no prediction."""
        kept = self.kept.get(phrase, 0)
        return self.counts.get(phrase, {}).get(category, 0) / kept if kept else None

    def to_dict(self) -> dict:
        """Dense phrase x category matrices (lists of lists) plus row totals."""

        def grid(source):
            return [[source.get(p, {}).get(c, 0) for c in self.categories] for p in self.phrases]

        rates = [[self.rate(p, c) for c in self.categories] for p in self.phrases]
        return {
            "phrases": list(self.phrases),
            "categories": list(self.categories),
            "counts": grid(self.counts),
            "eligible": grid(self.eligible),
            "kept": [self.kept.get(p, 0) for p in self.phrases],
            "rate": rates,
        }


def _fmt(value: float | None, width: int = 7) -> str:
    return (
        f"{'-':>{width}}"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:>{width}.4f}"
    )


@dataclass(frozen=True)
class ConceptReport(ConceptMetrics):
    """Full evaluation result: aggregate metrics (inherited fields), per-phrase rows, attribute confusion.

    ``detail`` holds SAM3's per-threshold counts and metrics (``detail.to_sam3_dict()`` gives the exact
    output of SAM3's ``CGF1Evaluator``).  ``excluded_pairs`` counts the non-exhaustive pairs, which are
    left out of every metric.
    """

    per_phrase: tuple[PhraseMetrics, ...] = ()
    confusion: AttributeConfusion | None = None
    detail: CGF1Result | None = None
    score_threshold: float = 0.5
    exact: bool = False
    excluded_pairs: int = 0

    def to_dict(self) -> dict:
        """JSON-serialisable dict: aggregates, per-phrase rows, confusion, per-threshold detail, settings."""
        return {
            "aggregate": self.metrics_dict(),
            "per_phrase": [{"phrase": row.phrase, **row.metrics_dict()} for row in self.per_phrase],
            "attribute_confusion": self.confusion.to_dict() if self.confusion else None,
            "per_threshold": self.detail.to_dict() if self.detail else None,
            "sam3": self.detail.to_sam3_dict() if self.detail else None,
            "settings": {
                "score_threshold": self.score_threshold,
                "exact": self.exact,
                "excluded_non_exhaustive_pairs": self.excluded_pairs,
            },
        }

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON atomically (temp file in the same folder, then ``os.replace``).

        Readers never see a half-written file, and an interrupted write leaves any previous report intact.
        """
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def format_table(self) -> str:
        """Plain-text report: aggregate line, per-phrase table, then the non-zero attribute confusions."""
        mode = "exact arithmetic" if self.exact else "SAM3 smoothing"
        lines = [
            f"SA-Co concept segmentation (score >= {self.score_threshold:g}, {mode}; "
            f"{self.pairs} pairs: {self.positives} positive, {self.negatives} negative; "
            f"{self.excluded_pairs} non-exhaustive excluded)",
            f"cgF1 {_fmt(self.cgf1, 0)} | cgF1@50 {_fmt(self.cgf1_50, 0)} | "
            f"cgF1@75 {_fmt(self.cgf1_75, 0)} | pmF1 {_fmt(self.pmf1, 0)} | IL_MCC {_fmt(self.il_mcc, 0)} "
            f"(TP {self.il_tp} FP {self.il_fp} TN {self.il_tn} FN {self.il_fn})",
            f"P@50 {_fmt(self.precision, 0)} | R@50 {_fmt(self.recall, 0)} | mIoU(matched) "
            f"{_fmt(self.mean_matched_iou, 0)} | box L1 {_fmt(self.grounding_error_px, 0)} px "
            f"({_fmt(self.grounding_error_norm, 0)} of diag) | "
            f"presence acc {_fmt(self.presence_accuracy, 0)}",
            "",
        ]
        width = max([len("phrase")] + [len(r.phrase) for r in self.per_phrase])
        header = (
            f"{'phrase':<{width}} {'pairs':>5} {'pos':>4} {'neg':>4} {'gt':>5} {'kept':>5} {'cgF1':>7} "
            f"{'cgF1@50':>7} {'cgF1@75':>7} {'pmF1':>7} {'IL_MCC':>7} {'P@50':>7} {'R@50':>7} "
            f"{'mIoU':>7} {'boxL1px':>7} {'presAcc':>7}"
        )
        lines += [header, "-" * len(header)]
        for r in self.per_phrase:
            lines.append(
                f"{r.phrase:<{width}} {r.pairs:>5} {r.positives:>4} {r.negatives:>4} {r.gt_instances:>5} "
                f"{r.predictions_kept:>5} "
                + " ".join(
                    _fmt(v)
                    for v in (
                        r.cgf1,
                        r.cgf1_50,
                        r.cgf1_75,
                        r.pmf1,
                        r.il_mcc,
                        r.precision,
                        r.recall,
                        r.mean_matched_iou,
                        r.grounding_error_px,
                        r.presence_accuracy,
                    )
                )
            )
        if self.confusion is not None:
            cells = [
                (p, c, n)
                for p in self.confusion.phrases
                for c, n in sorted(self.confusion.counts.get(p, {}).items())
                if n
            ]
            lines += [
                "",
                "attribute confusion (kept predictions matching another category's instance, IoU >= 0.5):",
            ]
            lines += [
                f"  {p!r} -> {c!r}: {n}/{self.confusion.kept[p]} = {self.confusion.rate(p, c):.4f}"
                for p, c, n in cells
            ] or ["  none"]
        return "\n".join(lines)
