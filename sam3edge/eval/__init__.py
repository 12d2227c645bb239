"""Concept-segmentation evaluation: SA-Co cgF1 exactly as SAM3 computes it, plus diagnostics.

Typical use::

    from sam3edge.eval import evaluate
    report = evaluate("saco_gold_fruit.json", "predictions.json")
    print(report.format_table())
    report.save_json("eval/report.json")
"""

from sam3edge.eval.cgf1 import SAM3_IOU_THRESHOLDS, CGF1Result, cgf1_counts, evaluate_cgf1, match_pair
from sam3edge.eval.concept_metrics import evaluate
from sam3edge.eval.report import AttributeConfusion, ConceptMetrics, ConceptReport, PhraseMetrics

__all__ = [
    "SAM3_IOU_THRESHOLDS",
    "AttributeConfusion",
    "CGF1Result",
    "ConceptMetrics",
    "ConceptReport",
    "PhraseMetrics",
    "cgf1_counts",
    "evaluate",
    "evaluate_cgf1",
    "match_pair",
]
