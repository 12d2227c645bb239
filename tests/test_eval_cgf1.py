"""SA-Co cgF1 (``sam3edge.eval.cgf1``) on hand-built cases whose answers are derived by hand.

Hand answers use ``exact=True`` (no smoothing constants), so they are checked to 1e-12.  The default
SAM3-compatible mode is checked against ``SAM3_REFERENCE``: those numbers are the literal output of
Meta's evaluator (``sam3==0.1.4``, ``sam3/eval/cgf1_eval.py``, ``CGF1Evaluator(gt).evaluate(preds)``)
run on the very same ``case_*`` datasets during development.  Our ``to_sam3_dict()`` reproduced every
key bit for bit on all of them, and on ~800 random datasets (single ground truth and 3-annotator oracle,
with crowd, non-exhaustive and negative pairs, scores at exactly 0.5).  sam3 itself is not needed here.
"""

from __future__ import annotations

import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam3edge.data.rle import validate_rle_counts
from sam3edge.eval import SAM3_IOU_THRESHOLDS, cgf1_counts, evaluate_cgf1, match_pair

H, W = 20, 20


def rect(x0: int, y0: int, x1: int, y1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def make_gt(pairs: list[tuple]) -> dict:
    """pairs: (pair_id, file_name, phrase, [masks], extra image fields); crowd masks given as ("crowd", m)."""
    names = ["ripe apple", "unripe apple", "bruised apple", "leaf", "branch"]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    images, anns = [], []
    for pid, file_name, phrase, masks, *extra in pairs:
        cat = names.index(phrase) + 1
        h, w = (masks[0][1] if isinstance(masks[0], tuple) else masks[0]).shape if masks else (H, W)
        img = {
            "id": pid,
            "file_name": file_name,
            "width": w,
            "height": h,
            "text_input": phrase,
            "queried_category": cat,
            "is_instance_exhaustive": True,
        }
        img.update(extra[0] if extra else {})
        images.append(img)
        for m in masks:
            crowd = isinstance(m, tuple)
            m = m[1] if crowd else m
            r = rle(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": pid,
                    "segmentation": r,
                    "area": int(m.sum()),
                    "bbox": mask_utils.toBbox(r).tolist(),
                    "iscrowd": int(crowd),
                    "category_id": cat,
                }
            )
    return {"images": images, "annotations": anns, "categories": cats}


def pred(pid, mask: np.ndarray, score: float = 0.9) -> dict:
    r = rle(mask)
    return {
        "image_id": pid,
        "segmentation": r,
        "bbox": mask_utils.toBbox(r).tolist(),
        "score": score,
        "category_id": 1,
    }


SQ_A, SQ_B, SQ_C = rect(0, 0, 10, 10), rect(10, 10, 20, 20), rect(10, 0, 20, 10)


# ---------------------------------------------------------------------------------------------- cases
def case_perfect():
    gt = make_gt(
        [(1, "a.jpg", "ripe apple", [SQ_A]), (2, "a.jpg", "leaf", [SQ_B, SQ_C]), (3, "b.jpg", "branch", [])]
    )
    return gt, [pred(1, SQ_A), pred(2, SQ_C, 0.7), pred(2, SQ_B, 0.6)]


def case_fp_on_negative():
    gt = make_gt(
        [
            (1, "a.jpg", "ripe apple", [SQ_A]),
            (2, "b.jpg", "ripe apple", [SQ_B]),
            (3, "c.jpg", "leaf", []),
            (4, "d.jpg", "leaf", []),
        ]
    )
    return gt, [pred(1, SQ_A), pred(2, SQ_B), pred(3, SQ_C, 0.8)]


def case_iou_060():
    # GT 10x10, prediction = its top 6 rows: IoU = 60 / 100 = 0.6 exactly.
    gt = make_gt([(1, "a.jpg", "ripe apple", [SQ_A]), (2, "b.jpg", "leaf", [])])
    return gt, [pred(1, rect(0, 0, 10, 6))]


def case_low_scores():
    gt, preds = case_iou_060()
    # A perfect match and a false positive, both below 0.5: they must not exist.
    return gt, preds + [pred(1, SQ_A, 0.4999), pred(2, SQ_C, 0.1)]


def case_hungarian():
    # 10x20 image; GT A = columns 0-10, GT B = columns 0-20 (A inside B).
    # p1 (higher score): IoU(p1, A) = 10/15, IoU(p1, B) = 15/20 -> greedy gives it B;
    # p2: IoU(p2, A) = 5/20, IoU(p2, B) = 15/20 -> greedy leaves it unmatched (A is below 0.5).
    # Hungarian maximises total IoU: p1-A + p2-B = 1.417 > p1-B + p2-A = 1.0, so both are TPs.
    a, b = rect(0, 0, 10, 10, 10, 20), rect(0, 0, 20, 10, 10, 20)
    p1, p2 = rect(0, 0, 15, 10, 10, 20), rect(5, 0, 20, 10, 10, 20)
    gt = make_gt([(1, "a.jpg", "ripe apple", [a, b]), (2, "b.jpg", "leaf", [])])
    return gt, [pred(1, p1, 0.9), pred(1, p2, 0.8)]


def case_mixed_presence():
    # IL: TP = 3 (pairs 1-3), FP = 1 (pair 4), TN = 2 (pairs 5, 6), FN = 1 (pair 7).
    gt = make_gt(
        [
            (1, "a.jpg", "ripe apple", [SQ_A]),
            (2, "a.jpg", "leaf", [SQ_B]),
            (3, "b.jpg", "ripe apple", [SQ_A, SQ_B]),
            (4, "b.jpg", "branch", []),
            (5, "c.jpg", "branch", []),
            (6, "c.jpg", "leaf", []),
            (7, "d.jpg", "leaf", [SQ_C]),
        ]
    )
    preds = [pred(1, SQ_A), pred(2, SQ_B), pred(2, SQ_C), pred(3, SQ_A), pred(4, SQ_C)]
    return gt, preds


def case_all_negative():
    gt = make_gt([(1, "a.jpg", "ripe apple", []), (2, "a.jpg", "leaf", []), (3, "b.jpg", "leaf", [])])
    return gt, [pred(2, SQ_A, 0.3)]


def case_all_negative_with_fp():
    gt, _ = case_all_negative()
    return gt, [pred(2, SQ_A, 0.9)]


def case_empty_predictions():
    gt, _ = case_fp_on_negative()
    return gt, []


def case_crowd_and_non_exhaustive():
    # Pair 1: one real instance + one crowd region; a prediction on the crowd region is a FP.
    # Pair 2: only a crowd region, so it is a negative; predicting there is an image-level FP.
    # Pair 3: not exhaustive, ignored entirely despite its garbage prediction.
    gt = make_gt(
        [
            (1, "a.jpg", "ripe apple", [SQ_A, ("crowd", SQ_B)]),
            (2, "b.jpg", "leaf", [("crowd", SQ_A)]),
            (4, "c.jpg", "leaf", []),
            (3, "b.jpg", "branch", [SQ_C], {"is_instance_exhaustive": False}),
        ]
    )
    return gt, [pred(1, SQ_A), pred(1, SQ_B), pred(2, SQ_A), pred(3, SQ_A)]


# Output of Meta's CGF1Evaluator on the cases above (cgF1_eval_segm_ prefix dropped); see module docstring.
SAM3_REFERENCE = {
    "perfect": {
        "cgF1": 0.9999161703196139,
        "cgF1@0.5": 0.9999161703196139,
        "cgF1@0.75": 0.9999161703196139,
        "positive_micro_F1": 0.9999166702776991,
        "IL_MCC": 0.99999950000025,
        "precision@0.5": 0.9999666677777407,
        "recall@0.5": 0.9999666677777407,
        "positive_macro_F1": 0.9998750087494999,
    },
    "fp_on_negative": {
        "cgF1": 0.577292370399433,
        "cgF1@0.5": 0.5772923703994332,
        "cgF1@0.75": 0.5772923703994332,
        "positive_micro_F1": 0.9999000049998749,
        "IL_MCC": 0.5773501025230072,
        "precision@0.5": 0.6666444451851604,
        "recall@0.5": 0.9999500024998749,
        "positive_macro_F1": 0.9998500124991251,
    },
    "iou_060": {
        "cgF1": 0.29995470379503375,
        "cgF1@0.5": 0.9998490126501125,
        "cgF1@0.75": 0.0,
        "positive_micro_F1": 0.2999550037497375,
        "IL_MCC": 0.9999990000010001,
        "precision@0.5": 0.9999000099990001,
        "recall@0.5": 0.9999000099990001,
        "positive_macro_F1": 0.2999550037497375,
    },
    "low_scores": {
        "cgF1": 0.29995470379503375,
        "cgF1@0.5": 0.9998490126501125,
        "cgF1@0.75": 0.0,
        "positive_micro_F1": 0.2999550037497375,
        "IL_MCC": 0.9999990000010001,
        "precision@0.5": 0.9999000099990001,
        "recall@0.5": 0.9999000099990001,
        "positive_macro_F1": 0.2999550037497375,
    },
    "hungarian": {
        "cgF1": 0.4999445033053842,
        "cgF1@0.5": 0.9998990051008698,
        "cgF1@0.75": 0.49992450632518115,
        "positive_micro_F1": 0.49994500324988744,
        "IL_MCC": 0.9999990000010001,
        "precision@0.5": 0.9999500024998749,
        "recall@0.5": 0.9999500024998749,
        "positive_macro_F1": 0.49994500324988744,
    },
    "mixed_presence": {
        "cgF1": 0.277751007310488,
        "cgF1@0.5": 0.277751007310488,
        "cgF1@0.75": 0.277751007310488,
        "positive_micro_F1": 0.6666024730953727,
        "IL_MCC": 0.41666663194444736,
        "precision@0.5": 0.5999880002399952,
        "recall@0.5": 0.5999880002399952,
        "positive_macro_F1": 0.7776685261416671,
    },
    "all_negative": {
        "cgF1": 0.0,
        "cgF1@0.5": 0.0,
        "cgF1@0.75": 0.0,
        "positive_micro_F1": 0.0,
        "IL_MCC": 0.0,
        "precision@0.5": 0.0,
        "recall@0.5": 0.0,
        "positive_macro_F1": -1.0,
    },
    "all_negative_with_fp": {
        "cgF1": 0.0,
        "cgF1@0.5": 0.0,
        "cgF1@0.75": 0.0,
        "positive_micro_F1": 0.0,
        "IL_MCC": 0.0,
        "precision@0.5": 0.0,
        "recall@0.5": 0.0,
        "positive_macro_F1": -1.0,
    },
    "empty_predictions": {
        "cgF1": 0.0,
        "cgF1@0.5": 0.0,
        "cgF1@0.75": 0.0,
        "positive_micro_F1": 0.0,
        "IL_MCC": 0.0,
        "precision@0.5": 0.0,
        "recall@0.5": 0.0,
        "positive_macro_F1": -1.0,
    },
    "crowd_and_non_exhaustive": {
        "cgF1": 0.3332887248371067,
        "cgF1@0.5": 0.33328872483710664,
        "cgF1@0.75": 0.33328872483710664,
        "positive_micro_F1": 0.6665777829629381,
        "IL_MCC": 0.499999750000125,
        "precision@0.5": 0.3333222225925802,
        "recall@0.5": 0.9999000099990001,
        "positive_macro_F1": 0.6665777829629381,
    },
}

CASES = {name[5:]: fn for name, fn in globals().copy().items() if name.startswith("case_")}


# Hand-derived exact answers (exact=True): cgF1, cgF1@50, cgF1@75, pmF1, IL_MCC, (IL TP, FP, TN, FN).
HAND = {
    "perfect": (1.0, 1.0, 1.0, 1.0, 1.0, (2, 0, 1, 0)),
    # FP on a negative pair is not a pmF1 false positive; MCC = (2*1 - 1*0) / sqrt(3*2*2*1).
    "fp_on_negative": (
        2 / math.sqrt(12),
        2 / math.sqrt(12),
        2 / math.sqrt(12),
        1.0,
        2 / math.sqrt(12),
        (2, 1, 1, 0),
    ),
    # IoU 0.6 is a TP at 0.50, 0.55, 0.60 and a FP+FN at the 7 higher thresholds: (3 * 1 + 7 * 0) / 10.
    "iou_060": (0.3, 1.0, 0.0, 0.3, 1.0, (1, 0, 1, 0)),
    "low_scores": (0.3, 1.0, 0.0, 0.3, 1.0, (1, 0, 1, 0)),
    # Matches p1-A (0.667) and p2-B (0.75): pmF1 = 1 up to 0.65, 0.5 at 0.70/0.75, 0 above: 5 / 10.
    "hungarian": (0.5, 1.0, 0.5, 0.5, 1.0, (1, 0, 1, 0)),
    # TP 3, pmFP 1, FN 2 -> pmF1 = 2/3; MCC = (3*2 - 1*1) / sqrt(4*4*3*3) = 5/12.
    "mixed_presence": (5 / 18, 5 / 18, 5 / 18, 2 / 3, 5 / 12, (3, 1, 2, 1)),
    "all_negative": (0.0, 0.0, 0.0, 0.0, 0.0, (0, 0, 3, 0)),
    "all_negative_with_fp": (0.0, 0.0, 0.0, 0.0, 0.0, (0, 1, 2, 0)),
    "empty_predictions": (0.0, 0.0, 0.0, 0.0, 0.0, (0, 0, 2, 2)),
    # Crowd region ignored (prediction on it = FP); crowd-only pair is a negative; non-exhaustive dropped.
    # TP 1, pmFP 1, FN 0 -> pmF1 = 2/3; IL TP 1, FP 1, TN 1 -> MCC = 1 / sqrt(2*1*2*1) = 1/2.
    "crowd_and_non_exhaustive": (1 / 3, 1 / 3, 1 / 3, 2 / 3, 0.5, (1, 1, 1, 0)),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_derived_exact(name):
    gt, preds = CASES[name]()
    r = evaluate_cgf1(gt, preds, exact=True)
    cgf1, cgf1_50, cgf1_75, pmf1, mcc, il = HAND[name]
    assert r.cgf1 == pytest.approx(cgf1, abs=1e-12)
    assert r.cgf1_50 == pytest.approx(cgf1_50, abs=1e-12)
    assert r.cgf1_75 == pytest.approx(cgf1_75, abs=1e-12)
    assert r.pmf1 == pytest.approx(pmf1, abs=1e-12)
    assert r.il_mcc == pytest.approx(mcc, abs=1e-12)
    assert (r.il_tp, r.il_fp, r.il_tn, r.il_fn) == il


@pytest.mark.parametrize("name", sorted(SAM3_REFERENCE))
def test_matches_sam3_evaluator_output(name):
    gt, preds = CASES[name]()
    ours = {k.replace("cgF1_eval_segm_", ""): v for k, v in evaluate_cgf1(gt, preds).to_sam3_dict().items()}
    for key, expected in SAM3_REFERENCE[name].items():
        assert ours[key] == pytest.approx(expected, rel=0, abs=1e-12), key


def test_sam3_mode_differs_from_exact_only_by_smoothing():
    gt, preds = case_perfect()
    sam3, exact = evaluate_cgf1(gt, preds), evaluate_cgf1(gt, preds, exact=True)
    assert exact.cgf1 == 1.0
    # SAM3's epsilons: pmF1 = 2p^2 / (2p + 1e-4) with p = 3 / 3.0001; MCC = 2 / (2 + 1e-6).
    p = 3 / (3 + 1e-4)
    assert sam3.cgf1 == pytest.approx(2 * p * p / (2 * p + 1e-4) * 2 / (2 + 1e-6), abs=1e-15)
    assert 0 < exact.cgf1 - sam3.cgf1 < 1e-3


def test_per_threshold_counts_iou_060():
    r = evaluate_cgf1(*case_iou_060())
    assert r.tp.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert r.fp.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert r.fn.tolist() == r.fp.tolist()


def test_arange_thresholds_would_drop_the_exact_060_match():
    # np.arange(0.5, 0.96, 0.05)[2] is 0.6000000000000001 > 0.6: the IoU-0.6 match is lost there, which
    # is why the default thresholds are pycocotools' linspace (what SAM3 uses).
    r = evaluate_cgf1(*case_iou_060(), iou_thresholds=np.arange(0.5, 0.96, 0.05), exact=True)
    assert r.tp.tolist()[:3] == [1, 1, 0]
    assert r.cgf1 == pytest.approx(0.2, abs=1e-12)
    assert SAM3_IOU_THRESHOLDS[2] == 0.6 and SAM3_IOU_THRESHOLDS[5] == 0.75


def test_score_exactly_at_threshold_is_kept():
    gt, _ = case_iou_060()
    r = evaluate_cgf1(gt, [pred(1, SQ_A, 0.5)], exact=True)
    assert r.cgf1 == 1.0
    r = evaluate_cgf1(gt, [pred(1, SQ_A, 0.5)], score_threshold=0.6, exact=True)
    assert (r.il_tp, r.il_fn) == (0, 1)


def test_hungarian_not_greedy():
    a, b = rect(0, 0, 10, 10, 10, 20), rect(0, 0, 20, 10, 10, 20)
    p1, p2 = rect(0, 0, 15, 10, 10, 20), rect(5, 0, 20, 10, 10, 20)
    ious = mask_utils.iou([rle(p1), rle(p2)], [rle(a), rle(b)], [0, 0])
    # Greedy by score: p1 takes its best GT (B), then p2's only other option A is below 0.5 -> 1 TP.
    assert ious[0].argmax() == 1 and ious[1, 0] < 0.5
    outcome = match_pair(ious)
    assert sorted((d, g) for d, g, _ in outcome.matches) == [(0, 0), (1, 1)]
    assert outcome.tp[0] == 2 and outcome.fp[0] == 0 and outcome.fn[0] == 0


def test_match_pair_empty_shapes():
    for shape, presence, fp, fn in [((0, 0), "TN", 0, 0), ((2, 0), "FP", 2, 0), ((0, 3), "FN", 0, 3)]:
        o = match_pair(np.zeros(shape))
        assert o.presence == presence and (o.fp == fp).all() and (o.fn == fn).all() and (o.tp == 0).all()
    assert match_pair(np.zeros((0, 0))).local_f1() is None


def test_oracle_picks_the_best_annotator():
    # Annotator 1 marked one apple, annotator 2 marked two; the prediction finds both.
    gt1 = make_gt([(1, "a.jpg", "ripe apple", [SQ_A]), (2, "b.jpg", "leaf", [])])
    gt2 = make_gt([(1, "a.jpg", "ripe apple", [SQ_A, SQ_B]), (2, "b.jpg", "leaf", [])])
    preds = [pred(1, SQ_A), pred(1, SQ_B)]
    assert evaluate_cgf1(gt1, preds, exact=True).cgf1 == pytest.approx(2 / 3, abs=1e-12)
    assert evaluate_cgf1([gt1, gt2], preds, exact=True).cgf1 == 1.0
    assert evaluate_cgf1([gt2, gt1], preds, exact=True).cgf1 == 1.0
    # A pair that is non-exhaustive for any annotator is dropped.
    gt2["images"][1]["is_instance_exhaustive"] = False
    r = evaluate_cgf1([gt1, gt2], preds + [pred(2, SQ_C)], exact=True)
    assert (r.il_tp, r.il_fp, r.il_tn, r.il_fn) == (1, 0, 0, 0)


def test_no_evaluable_pair_is_an_error():
    gt, preds = case_iou_060()
    for img in gt["images"]:
        img["is_instance_exhaustive"] = False
    with pytest.raises(ValueError, match="instance-exhaustive"):
        evaluate_cgf1(gt, preds)


def test_to_dict_is_json_serialisable():
    import json

    d = evaluate_cgf1(*case_all_negative()).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["pm_macro_f1"] == [None] * 10 and d["il_tn"] == 3


# ------------------------------------------------------------------------------------ properties
masks_st = st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(1, 8), st.integers(1, 8)).map(
    lambda t: rect(t[0], t[1], t[0] + t[2], t[1] + t[3], 12, 12)
)
pairs_st = st.lists(st.lists(masks_st, max_size=3), min_size=1, max_size=5)


def _dataset(pair_masks):
    size = {"height": 12, "width": 12}
    return make_gt([(i + 1, f"{i}.jpg", "leaf", ms, size) for i, ms in enumerate(pair_masks)])


@settings(max_examples=40, deadline=None)
@given(pairs_st, st.lists(st.tuples(st.integers(0, 4), masks_st, st.floats(0, 1)), max_size=8))
def test_property_cgf1_bounded_and_low_scores_change_nothing(pair_masks, raw_preds):
    gt = _dataset(pair_masks)
    preds = [pred(1 + i % len(pair_masks), m, s) for i, m, s in raw_preds]
    for exact in (False, True):
        r = evaluate_cgf1(gt, preds, exact=exact)
        assert -1.0 <= r.cgf1 <= 1.0 and -1.0 <= r.il_mcc <= 1.0 and 0.0 <= r.pmf1 <= 1.0
        assert np.all(np.diff(r.tp) <= 0)  # TPs can only drop as the IoU threshold rises
        noisy = preds + [pred(1 + i % len(pair_masks), m, 0.4999 * s) for i, m, s in raw_preds]
        assert evaluate_cgf1(gt, noisy, exact=exact).to_dict() == r.to_dict()


@settings(max_examples=40, deadline=None)
@given(pairs_st)
def test_property_perfect_predictions_score_one(pair_masks):
    gt = _dataset(pair_masks)
    preds = [pred(i + 1, m) for i, ms in enumerate(pair_masks) for m in ms]
    r = evaluate_cgf1(gt, preds, exact=True)
    has_pos, has_neg = any(pair_masks), not all(pair_masks)
    # MCC needs both classes; with only one of them it is 0 by definition (0/0 := 0, as SAM3's epsilon).
    assert r.cgf1 == (1.0 if has_pos and has_neg else 0.0)
    assert (r.il_fp, r.il_fn) == (0, 0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.data())
def test_property_rle_validator_accepts_pycocotools_and_rejects_wrong_size(h, w, data):
    bits = data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    counts = mask_utils.encode(np.asfortranarray(np.array(bits, dtype=np.uint8).reshape(h, w)))["counts"]
    validate_rle_counts(counts, h, w, "m")
    with pytest.raises(ValueError):
        validate_rle_counts(counts, h, w + 1, "m")
    if len(counts) > 1:
        with pytest.raises(ValueError):  # dropping a run changes the pixel total
            validate_rle_counts(counts[:-1], h, w, "m")


def test_cgf1_counts_of_nothing_is_zero():
    r = cgf1_counts([])
    assert (r.cgf1, r.il_mcc, r.pmf1) == (0.0, 0.0, 0.0)
